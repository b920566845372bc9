//go:build linux

package runtime

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// upgradeSelf starts the executable now on disk as a new primary through
// tableflip and hands the workers over to it, slot by slot. It returns nil
// once the new primary owns everything.
func (p *primary) upgradeSelf(ctx context.Context, gen int) error {
	if err := p.upg.WaitForParent(ctx); err != nil {
		return fmt.Errorf("the previous primary has not exited yet: %v", err)
	}
	ln, err := listenHandover(p.dir)
	if err != nil {
		return err
	}
	os.Setenv(envHandover, ln.Addr().String())
	defer os.Unsetenv(envHandover)

	type handover struct {
		peer *peer
		proc *process
	}
	accepted := make(chan handover, 1)
	acceptDone := make(chan struct{})
	var (
		mu      sync.Mutex
		newProc *process // the connected new primary, unless ctx ended first
	)
	go func() {
		defer close(acceptDone)
		conn, pid, err := acceptHandover(ln)
		if err != nil {
			return
		}
		proc := openProcess(pid)
		mu.Lock()
		if ctx.Err() != nil {
			mu.Unlock()
			conn.Close()
			proc.release()
			return
		}
		newProc = proc
		mu.Unlock()
		p.stmu.Lock()
		if p.deploying != nil {
			p.deploying.NewPrimary = pid
		}
		p.stmu.Unlock()
		var pr *peer
		pr = newPeer(conn, p.pool.HandOver, func() error {
			if err := ctx.Err(); err != nil {
				// Shutting down: the new primary drains what it has.
				return err
			}
			p.log.Info("rolling back a failed hand-over", zap.Int("new_primary", pid))
			return p.pool.RollBack(ctx, pr.retire)
		}, p.deployStep)
		accepted <- handover{pr, proc}
		pr.send(message{Op: "state", Generation: gen, Size: p.pool.Size()})
	}()

	// tableflip's Upgrade takes no context. On a shutdown asked for
	// meanwhile, a connected new primary gets TERM: it ends the hand-over
	// and drains its workers like any primary that shuts down. Only one
	// that has not connected yet (it has no worker), or does not exit in
	// time, is killed, with its workers, by stopping the upgrader.
	upgraded := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
		case <-upgraded:
			return
		}
		mu.Lock()
		proc := newProc
		mu.Unlock()
		if proc != nil && proc.signal(syscall.SIGTERM) == nil {
			p.log.Info("stopping the new primary", zap.Int("new_primary", proc.pid))
			t := time.NewTimer(2*p.cfg.DrainTimeout + 10*time.Second)
			defer t.Stop()
			select {
			case <-upgraded:
				return
			case <-t.C:
				p.log.Warn("the new primary did not exit in time, killing it", zap.Int("new_primary", proc.pid))
			}
		}
		p.upg.Stop()
	}()
	upErr := p.upg.Upgrade()
	close(upgraded)
	ln.Close()
	<-acceptDone
	var ho handover
	select {
	case ho = <-accepted: // always, if the new primary became ready
	default:
	}
	if ho.peer != nil {
		// Nothing from the hand-over may act on the pool once this
		// returns: close it and wait for its reader and any roll-back.
		ho.peer.close()
		ho.peer.wait()
	}
	if upErr == nil {
		p.successor = ho.proc
		return nil
	}
	ho.proc.release()
	// The new primary is gone, and its workers with it: refill whatever
	// it had taken over and did not roll back.
	if n := p.pool.Remote(); n > 0 && ctx.Err() == nil {
		p.log.Warn("reclaiming slots from the failed new primary", zap.Int("slots", n))
		p.pool.Reclaim()
	}
	return upErr
}

// takeOver is a new primary started by tableflip: it fills every slot
// while the old primary retires its workers one at a time, then becomes
// the primary that owns the listeners.
func (p *primary) takeOver(ctx context.Context, sigs <-chan os.Signal, path string, metricsLn net.Listener) error {
	addr := os.Getenv(envHandover)
	os.Unsetenv(envHandover)
	if addr == "" {
		return errors.New("started by an upgrade but no hand-over socket was given")
	}
	conn, err := net.Dial("unix", addr)
	if err != nil {
		return fmt.Errorf("cannot reach the old primary: %v", err)
	}
	pr := newPeer(conn, p.pool.HandOver, nil, nil)
	// Its reader may be retiring a worker: it ends before Run returns.
	defer func() { pr.close(); pr.wait() }()
	pr.send(message{Op: "hello", Pid: os.Getpid()})
	st, err := pr.await(ctx, "state")
	if err != nil {
		return err
	}
	p.gen = st.Generation
	start := time.Now()
	p.log.Info("taking over", zap.Int("generation", p.gen), zap.Int("old_primary", os.Getppid()), zap.Int("workers", st.Size))
	if st.Size > 0 && st.Size != p.pool.Size() {
		// The old primary's pool, scaled or not.
		if err := p.pool.Scale(ctx, st.Size, nil); err != nil {
			return fmt.Errorf("upgrade aborted: %v", err)
		}
	}

	p.pool.Adopt()
	spec := p.spec(path, p.gen)
	// A TERM or INT ends the roll; the slots taken are handed back (unless
	// the old primary is shutting down too) and the workers drained.
	queue, shutdownSig, err := p.underSignals(ctx, sigs, "the primary is taking over", func(ctx context.Context) error {
		progress := p.progress(p.gen)
		return p.pool.Roll(ctx, spec, pr.retire, func(step, steps int) {
			progress(step, steps)
			pr.send(message{Op: "step", Slot: step, Steps: steps})
		})
	})
	if shutdownSig != nil {
		// Told to stop: this primary does not take over, even if every
		// slot is already its own.
		err = fmt.Errorf("shutdown asked for (%v)", shutdownSig)
	}
	if err != nil {
		queue.finish(ErrShuttingDown)
		p.logAbort(p.gen, err)
		if p.pool.Remote() < p.pool.Size() {
			// Some slots are ours already: the old primary takes them
			// back one at a time before this one goes.
			rctx, cancel := context.WithTimeout(ctx, time.Duration(p.pool.Size()+1)*p.cfg.ReadyTimeout)
			if serr := pr.send(message{Op: "rollback"}); serr == nil {
				if _, rerr := pr.await(rctx, "rolledback"); rerr != nil {
					p.log.Warn("roll-back incomplete", zap.Error(rerr))
				}
			}
			cancel()
		}
		if shutdownSig != nil {
			return p.shutdown()
		}
		p.pool.Shutdown()
		return fmt.Errorf("upgrade aborted: %v", err)
	}
	p.owner = true
	p.current = spec
	p.setServingGen(p.gen)
	if err := p.upg.Ready(); err != nil {
		p.log.Error("cannot write the pid file", zap.Error(err))
	}
	notifySystemd("MAINPID=" + strconv.Itoa(os.Getpid()) + "\nREADY=1\nSTATUS=serving generation " + strconv.Itoa(p.gen))
	if metricsLn != nil {
		// The old primary answered until now and stops at the hand-over;
		// both accept on the one socket meanwhile, so no scrape or probe
		// finds it closed.
		p.web.serve(metricsLn, p.log)
	}
	p.metrics.deployed(kindPrimary, nil, time.Since(start), p.gen)
	p.log.Info("upgrade finished", zap.Int("generation", p.gen), zap.Duration("duration", time.Since(start)))
	p.log.Info("primary ready", zap.Int("workers", p.pool.Size()), zap.Int("generation", p.gen))
	pr.close()
	// The old primary has stopped accepting on the control socket, or
	// will once it sees this primary ready: answer it from now on.
	p.ctl.serve()
	return p.loop(ctx, sigs, queue)
}

// retireAfterHandOver waits for the workers still draining, then returns
// so the old primary exits. A deploy asked for meanwhile goes to the new
// primary; every request is answered with errHandedOver.
func (p *primary) retireAfterHandOver(sigs <-chan os.Signal, pending bool) error {
	p.log.Info("handed over", zap.Int("new_primary", p.successor.pid))
	p.ctl.handedOver(p.successor.pid)
	p.cfg.Hub.handedOver()
	// The new primary serves --metrics now.
	p.web.close()
	defer p.successor.release()
	forward := func() { p.successor.signal(syscall.SIGHUP) }
	if pending {
		forward()
	}
	done := make(chan struct{})
	go func() {
		p.pool.Shutdown()
		close(done)
	}()
	for {
		select {
		case sig := <-sigs:
			switch sig {
			case syscall.SIGHUP, syscall.SIGTTIN, syscall.SIGTTOU:
				p.successor.signal(sig.(syscall.Signal))
			}
		case r := <-p.reqs:
			// The new primary watches the same files since before it
			// connected: a change seen here is seen there too. One who
			// waits for an answer is told to ask the new primary (see
			// controlServer.retry).
			if r.run == nil && r.done == nil && r.op != opWatch {
				forward()
			}
			if r.done != nil {
				r.done <- errHandedOver
			}
		case <-done:
			p.log.Info("old primary exiting")
			return nil
		}
	}
}

// selfChanged reports whether the executable tableflip would start now is
// another file than the one this primary runs.
//
// As PID 1 the primary never upgrades itself: its exit would end the pid
// namespace (the container) and every worker with it.
func (p *primary) selfChanged() bool {
	if os.Getpid() == 1 {
		return false
	}
	path, err := exec.LookPath(os.Args[0])
	if err != nil {
		return false
	}
	id, err := statID(path)
	return err == nil && id != p.selfID
}

type fileID struct{ dev, ino uint64 }

func statID(path string) (fileID, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return fileID{}, err
	}
	return fileID{uint64(st.Dev), st.Ino}, nil
}
