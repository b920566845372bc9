//go:build linux

package runtime

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	goruntime "runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/handoff-dev/handoff/internal/pin"
	"github.com/handoff-dev/handoff/workerpool"
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
	// The new primary keeps this one's generations, pinned files and all.
	curToken, prevToken := p.exportGenerations()
	os.Setenv(envHandover, ln.Addr().String())
	defer os.Unsetenv(envHandover)
	// The state again, for a new primary that finds this one dead before
	// it could ask.
	os.Setenv(envHandoverState, encodeState(os.Getpid(), gen, p.pool.Size()))
	defer os.Unsetenv(envHandoverState)

	// The bound is the pool's as the upgrade starts, scaled or not. Once
	// it has passed, no more slot is handed over, so that the new primary
	// cannot become ready (and take over) as it is being killed.
	bound := p.upgradeBound()
	var (
		hmu     sync.Mutex
		expired bool
	)
	handOver := func(slot int) error {
		hmu.Lock()
		defer hmu.Unlock()
		if expired {
			return fmt.Errorf("the upgrade took longer than %s", bound)
		}
		return p.pool.HandOver(slot)
	}

	type handover struct {
		peer *peer
		proc *process
	}
	accepted := make(chan handover, 1)
	acceptDone := make(chan struct{})
	var (
		mu      sync.Mutex
		newProc *process // the connected new primary, unless ctx ended first
		// rolledBack counts the slots the new primary had taken over
		// when it asked for a roll-back; rollbackErr is how that went.
		rolledBack  int
		rollbackErr error
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
		pr = newPeer(conn, handOver, func() error {
			if err := ctx.Err(); err != nil {
				// Shutting down: the new primary drains what it has.
				return err
			}
			p.log.Info("rolling back a failed hand-over", zap.Int("new_primary", pid))
			n := p.pool.Remote()
			err := p.pool.RollBack(ctx, pr.retire)
			mu.Lock()
			rolledBack, rollbackErr = n, err
			mu.Unlock()
			return err
		}, p.deployStep)
		accepted <- handover{pr, proc}
		pr.send(message{Op: "state", Generation: gen, Size: p.pool.Size(), Current: curToken, Previous: prevToken})
		// A deploy asked for here (the pid file still names this
		// primary) ends the new primary's probation, as it would this
		// one's: it takes over at once, and the deploy, passed on at the
		// hand-over (or asked of it again: see retireAfterHandOver),
		// runs there next.
		go func() {
			select {
			case <-newerDeploy(ctx):
				p.log.Info("ending the new primary's probation: a newer deploy was asked for", zap.Int("new_primary", pid))
				pr.send(message{Op: "newer"})
			case <-pr.closed: // closed as upgradeSelf returns
			}
		}()
	}()

	// tableflip's Upgrade takes no context. On a shutdown asked for
	// meanwhile, a connected new primary gets TERM: it ends the hand-over
	// and drains its workers like any primary that shuts down. Only one
	// that has not connected yet (it has no worker), or does not exit in
	// time, is killed, with its workers, by stopping the upgrader. One
	// that is not ready within the bound is killed (its workers die with
	// it), as tableflip's own bound would.
	upgraded := make(chan struct{})
	watchDone := make(chan struct{})
	var timedOut bool // read once watchDone is closed
	connected := func() *process {
		mu.Lock()
		defer mu.Unlock()
		return newProc
	}
	go func() {
		defer close(watchDone)
		deadline := time.NewTimer(bound)
		defer deadline.Stop()
		select {
		case <-ctx.Done():
		case <-deadline.C:
			timedOut = p.killLateNewPrimary(connected(), ln.Addr().String(), bound, p.stopGrace(), upgraded, func() bool {
				hmu.Lock()
				defer hmu.Unlock()
				// Every slot handed over: its Ready is on its way.
				expired = p.pool.Remote() < p.pool.Size()
				return expired
			})
			return
		case <-upgraded:
			return
		}
		proc := connected()
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
	upErr := p.exportGroups()
	if upErr == nil {
		upErr = p.upg.Upgrade()
	}
	close(upgraded)
	// Nothing signals the new primary from here on: its pidfd may close.
	<-watchDone
	if upErr != nil && timedOut {
		upErr = fmt.Errorf("not ready within %s: %v", bound, upErr)
	}
	ln.Close()
	<-acceptDone
	var ho handover
	select {
	case ho = <-accepted: // always, if the new primary became ready
	default:
	}
	if upErr == nil && ho.proc != nil {
		// Still the main process to systemd, this primary hands that
		// over itself, so its exit is never taken for the service's
		// (NotifyAccess=main accepts only the main process's messages),
		// then lets the new primary say READY=1.
		notifySystemd("MAINPID=" + strconv.Itoa(ho.proc.pid))
		if ho.peer != nil {
			ho.peer.send(message{Op: "mainpid"})
		}
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
	// The new primary is gone: this one steers its sockets again.
	p.sockets.thaw()
	p.pool.Steer()
	// tableflip drops, without closing them, the pipe ends it gave the
	// new primary: their finalizers close them once collected. Collect
	// now, or every failed upgrade leaves two descriptors more.
	goruntime.GC()
	// The new primary is gone, and its workers with it: refill whatever
	// it had taken over and did not roll back.
	if n := p.pool.Remote(); n > 0 && ctx.Err() == nil {
		p.log.Warn("reclaiming slots from the failed new primary", zap.Int("slots", n))
		p.pool.Reclaim(ctx, nil)
	}
	mu.Lock()
	defer mu.Unlock()
	if rolledBack > 0 {
		return &workerpool.RolledBackError{Cause: fmt.Errorf("new primary: %w", upErr), Slots: rolledBack, Err: rollbackErr}
	}
	return upErr
}

// Keys under which a primary hands its generations' pinned files to a new
// one: fixed, since tableflip keeps what it is given until it stops, and
// a later export under the same key replaces an earlier one.
const (
	pinKeyCurrent  = "handoff-pin-current"
	pinKeyPrevious = "handoff-pin-previous"
)

// exportGenerations hands the pinned files of the current and previous
// generations to tableflip, for a new primary (see importGeneration),
// replacing what an earlier export (or the old primary's) left under the
// same keys. A generation that cannot be handed over is left out: the new
// primary cannot roll back to it.
func (p *primary) exportGenerations() (cur, prev *generationToken) {
	if p.pinStore == nil {
		p.pinStore = &exportOnce{fds: p.upg.Fds, held: map[string]*os.File{}}
	}
	export := func(g *generation, key string) *generationToken {
		if g == nil || g.pin() == nil {
			return nil
		}
		t, err := g.pin().Export(p.pinStore, key)
		if err != nil {
			p.log.Warn("cannot hand over a generation", zap.Int("generation", g.gen), zap.Error(err))
			return nil
		}
		return &generationToken{Generation: g.gen, RollbackOf: g.rollbackOf, Pin: t}
	}
	return export(p.cur, pinKeyCurrent), export(p.prev, pinKeyPrevious)
}

// exportOnce is the pin.Store through which a primary exports its
// generations: it gives tableflip a file only if tableflip does not hold
// that very file under that key already. tableflip duplicates every file
// it is given and, given another under the same key, drops its earlier
// duplicate without closing it (the garbage collector does, some time
// later): re-exporting the same generations on every self-upgrade that
// failed would pile up descriptors, and memfd copies of whole executables.
type exportOnce struct {
	fds  pin.Store
	held map[string]*os.File // key → the file tableflip holds a duplicate of
}

func (s *exportOnce) AddFile(key string, f *os.File) error {
	if s.held[key] == f {
		return nil
	}
	if err := s.fds.AddFile(key, f); err != nil {
		return err
	}
	// The pin stays referenced here, so no later file can take its
	// address while tableflip holds its duplicate.
	s.held[key] = f
	return nil
}

func (s *exportOnce) File(key string) (*os.File, error) { return s.fds.File(key) }

// importGeneration takes over a generation of the old primary, its pinned
// file from tableflip's descriptors (nil if none was handed over, or it
// cannot be imported: a warning says why).
func (p *primary) importGeneration(t *generationToken) *generation {
	if t == nil {
		return nil
	}
	f, err := pin.Import(p.upg.Fds, t.Pin)
	if err != nil {
		p.log.Warn("cannot take over a generation", zap.Int("generation", t.Generation), zap.Error(err))
		return nil
	}
	p.keepPin(f)
	spec := p.spec(t.Pin.Identity.Path, t.Generation)
	spec.Pin = f
	return &generation{gen: t.Generation, spec: spec, rollbackOf: t.RollbackOf}
}

// upgradeSlack is the part of a self-upgrade's bound that does not grow
// with the pool: the new primary's own start, and room to spare.
const upgradeSlack = time.Minute

// tableflipNever is tableflip's own upgrade bound, never reached:
// upgradeSelf enforces upgradeBound instead, which tableflip, fixing its
// bound once for every upgrade, cannot.
const tableflipNever = 100 * 365 * 24 * time.Hour

// upgradeBound is how long a self-upgrade may take, for a pool of size
// slots: the new primary calls Ready after rolling every slot, each new
// worker taking up to ready; one that fails drains its new worker and rolls
// back before it exits.
func upgradeBound(size int, ready, drain time.Duration) time.Duration {
	return time.Duration(size+1)*ready + 2*drain + upgradeSlack
}

// upgradeBound is the bound of a self-upgrade that starts now: for the
// pool as it is now, scaled or not, and with the new primary's probation
// (--min-uptime: its last worker's, and a roll-back's margin).
func (p *primary) upgradeBound() time.Duration {
	return upgradeBound(p.pool.Size(), p.cfg.ReadyTimeout, p.cfg.DrainTimeout) + 2*max(p.cfg.MinUptime, 0)
}

// killLateNewPrimary stops a new primary that is not ready within bound:
// proc if it has connected, else the child found by its hand-over socket
// addr. stopHandOver stops handing over slots and reports whether the new
// primary still lacks some, i.e. cannot become ready before it stops; if
// it lacks none, its Ready is on its way, and it is stopped only if it has
// not come upgradeSlack later (upgraded closed: it came). It gets TERM
// first, which a new primary takes like any stop during a take-over: it
// asks this primary to roll its slots back, one at a time, then drains its
// workers and exits (upgraded closes). Only one still running grace later
// is killed, its workers with it (Pdeathsig; upgradeSelf then reclaims
// their slots at once). It reports whether it stopped the new primary.
func (p *primary) killLateNewPrimary(proc *process, addr string, bound, grace time.Duration, upgraded <-chan struct{}, stopHandOver func() bool) bool {
	if !stopHandOver() && closedWithin(upgraded, upgradeSlack) {
		return false
	}
	if proc == nil {
		if proc = findNewPrimary(addr); proc == nil {
			p.log.Error("the new primary is not ready in time and cannot be found", zap.Duration("timeout", bound))
			return false
		}
		defer proc.release()
	}
	p.log.Warn("the new primary is not ready in time, stopping it", zap.Int("new_primary", proc.pid), zap.Duration("timeout", bound))
	if proc.signal(syscall.SIGTERM) != nil {
		return false
	}
	if closedWithin(upgraded, grace) {
		return true
	}
	p.log.Warn("the new primary is not ready in time, killing it", zap.Int("new_primary", proc.pid), zap.Duration("timeout", bound+grace))
	return proc.signal(syscall.SIGKILL) == nil
}

// closedWithin reports whether ch closes within d.
func closedWithin(ch <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
		return true
	case <-t.C:
		return false
	}
}

// stopGrace is how long a new primary told to stop during a take-over may
// take: the old primary rolls every slot back, a worker of its own ready
// in each, and the new one drains its workers.
func (p *primary) stopGrace() time.Duration {
	return time.Duration(p.pool.Size()+1)*p.cfg.ReadyTimeout + 2*p.cfg.DrainTimeout + 10*time.Second
}

// takeOver is a new primary started by tableflip: it fills every slot
// while the old primary retires its workers one at a time, then becomes
// the primary that owns the listeners.
//
// If the old primary dies meanwhile (an OOM kill, kill -9), its workers
// die with it, but this primary holds the listeners: it carries on. It
// fills at once every slot it has not taken over yet (Reclaim), then
// writes the pid file, tells systemd its pid and serves.
func (p *primary) takeOver(ctx context.Context, sigs <-chan os.Signal, path string, metricsLn net.Listener) error {
	addr := os.Getenv(envHandover)
	os.Unsetenv(envHandover)
	st := handoverState(os.Getenv(envHandoverState), p.cfg.Workers)
	os.Unsetenv(envHandoverState)
	if addr == "" {
		return errors.New("started by an upgrade but no hand-over socket was given")
	}
	old := p.watchOldPrimary(st.Pid)
	defer old.stop()
	pr, err := p.connect(ctx, addr)
	if pr != nil {
		// Its reader may be retiring a worker: it ends before Run returns.
		defer func(pr *peer) { pr.close(); pr.wait() }(pr)
	}
	if err == nil {
		var m message
		if m, err = pr.await(ctx, "state"); err == nil {
			st = m
		}
	}
	if err != nil {
		if !old.goneAfter(pr) {
			return err
		}
		// Dead before it told its state: the one it put in the
		// environment says the same.
		pr = nil
	}
	p.gen = st.Generation
	start := time.Now()
	pf, err := p.pinCommand(path)
	if err != nil {
		return fmt.Errorf("upgrade aborted: cannot pin the worker command: %v", err)
	}
	// The old primary's generations: what a rollback goes back to.
	oldCur, oldPrev := p.importGeneration(st.Current), p.importGeneration(st.Previous)
	p.log.Info("taking over", zap.Int("generation", p.gen), zap.Int("old_primary", old.pid), zap.Int("workers", st.Size))
	if st.Size > 0 && st.Size != p.pool.Size() {
		// The old primary's pool, scaled or not.
		if err := p.pool.Scale(ctx, st.Size, nil); err != nil {
			return fmt.Errorf("upgrade aborted: %v", err)
		}
	}

	p.pool.Adopt()
	for slot, s := range p.imported {
		// Steered to until this primary's worker replaces it.
		p.pool.AdoptSockets(slot, s)
	}
	if p.sockets != nil {
		// The old workers' sockets close once nothing can accept from
		// them: when the old primary, which waits for its workers, is
		// gone.
		go func() {
			if p.upg.WaitForParent(ctx) == nil || ctx.Err() == nil {
				p.sockets.oldGone()
			}
		}()
	}
	spec := p.spec(path, p.gen)
	spec.Pin = pf
	// A TERM or INT ends the roll; the slots taken are handed back (unless
	// the old primary is shutting down too, or is gone) and the workers
	// drained.
	queue, shutdownSig, err := p.underSignals(ctx, sigs, "the primary is taking over", func(ctx context.Context) error {
		if pr != nil {
			err := p.rollFrom(ctx, pr, old, spec)
			if err == nil || !old.goneAfter(pr) {
				return err
			}
		}
		return p.reclaimFrom(ctx, old, spec)
	})
	if old.isGone() {
		// Nobody else will close the listeners, nor remove the unix
		// socket files, when this primary stops.
		p.owner = true
	}
	if shutdownSig != nil {
		// Told to stop: this primary does not take over, even if every
		// slot is already its own.
		err = fmt.Errorf("shutdown asked for (%v)", shutdownSig)
	}
	if err == nil {
		err = p.readyAfterTakeOver(old)
	}
	if err != nil {
		queue.finish(ErrShuttingDown)
		p.logAbort(p.gen, err)
		if p.pool.Remote() < p.pool.Size() && pr != nil && !old.isGone() {
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
	p.cur = &generation{gen: p.gen, spec: spec}
	// The old primary's current generation is the previous one, unless
	// this one runs the same file (only handoff itself changed).
	p.prev = oldCur
	if sameBuild(p.cur, oldCur) {
		p.prev = oldPrev
	}
	p.keepGenerations()
	p.setServingGen(p.gen)
	if pr != nil {
		// systemd takes this primary's READY=1 once the old one has made
		// it the main process (or has gone: then MAINPID= below does).
		actx, cancel := context.WithTimeout(ctx, mainPIDWait)
		pr.await(actx, "mainpid")
		cancel()
	}
	old.stop()
	notifySystemd("MAINPID=" + strconv.Itoa(os.Getpid()) + "\nREADY=1\nSTATUS=serving generation " + strconv.Itoa(p.gen))
	if metricsLn != nil {
		// The old primary answered until now and stops at the hand-over;
		// both accept on the one socket meanwhile, so no scrape or probe
		// finds it closed.
		p.web.serve(metricsLn, p.log)
	}
	p.metrics.deployed(kindPrimary, outcomeDone, time.Since(start), p.gen)
	p.log.Info("upgrade finished", zap.Int("generation", p.gen), zap.Duration("duration", time.Since(start)))
	p.log.Info("primary ready", zap.Int("workers", p.pool.Size()), zap.Int("generation", p.gen))
	if pr != nil {
		pr.close()
	}
	// The old primary has stopped accepting on the control socket, or
	// will once it sees this primary ready: answer it from now on.
	p.ctl.Serve()
	return p.loop(ctx, sigs, queue)
}

// mainPIDWait bounds how long a new primary that became ready waits for
// the old one to tell systemd its pid (the "mainpid" message; an old
// primary that does not send it closes the connection as it goes).
const mainPIDWait = 10 * time.Second

// readyAfterTakeOver calls tableflip's Ready once every slot is this
// primary's: it writes the pid file, then tells the old primary, which
// then stops waiting in Upgrade. If the pid file cannot be written while
// the old primary lives, the take-over fails (the old primary, named in
// the pid file, takes the slots back and serves on); with the old primary
// gone, Ready fails only to tell it, or this primary is the only one left
// to serve: it carries on.
func (p *primary) readyAfterTakeOver(old *oldPrimary) error {
	err := p.upg.Ready()
	if err == nil {
		return nil
	}
	if old.goneAfter(nil) {
		if !p.pidFileIsMine() {
			p.log.Error("cannot write the pid file", zap.Error(err))
		}
		return nil
	}
	return fmt.Errorf("--pid-file %s: %v", p.cfg.PIDFile, unwrapAll(err))
}

// connect opens the hand-over connection to the old primary and says
// hello.
func (p *primary) connect(ctx context.Context, addr string) (*peer, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", addr)
	if err != nil {
		return nil, fmt.Errorf("cannot reach the old primary: %v", err)
	}
	pr := newPeer(conn, p.pool.HandOver, nil, nil)
	pr.send(message{Op: "hello", Pid: os.Getpid()})
	return pr, nil
}

// rollFrom rolls every slot from the old primary's workers to this one's,
// asking the old primary to retire each as its replacement is ready. If
// the old primary dies meanwhile, the roll stops at once (its worker
// starting is retired: Reclaim starts one with the others).
func (p *primary) rollFrom(ctx context.Context, pr *peer, old *oldPrimary, spec *workerpool.Spec) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case <-old.gone:
			cancel(errOldPrimaryGone)
		case <-ctx.Done():
		}
	}()
	if n, ok := ctx.Value(newerKey{}).(*newer); ok {
		// A deploy asked for of the old primary ends the probation too.
		go func() {
			select {
			case <-pr.newer:
				n.close()
			case <-ctx.Done():
			}
		}()
	}
	progress := p.progress(p.gen)
	// With its probation, before tableflip's Ready: a new build that dies
	// soon after it is ready is still rolled back by the old primary.
	return p.pool.RollWith(ctx, spec, workerpool.RollOptions{
		Surge:  p.cfg.Surge,
		Remote: pr.retire,
		Progress: func(step, steps int) {
			progress(step, steps)
			pr.send(message{Op: "step", Slot: step, Steps: steps})
		},
		MinUptime:    p.cfg.MinUptime,
		EndProbation: newerDeploy(ctx),
	})
}

// reclaimFrom fills, all at once, the slots the old primary, now gone,
// still held, and waits until their workers are ready (or ReadyTimeout).
// One that fails to start is restarted with backoff like any crashed
// worker: this primary owns the listeners and is the only one left to
// serve them.
func (p *primary) reclaimFrom(ctx context.Context, old *oldPrimary, spec *workerpool.Spec) error {
	n := p.pool.Remote()
	p.log.Warn("old primary gone", zap.Int("old_primary", old.pid), zap.Int("slots", n))
	if ready := p.pool.Reclaim(ctx, spec); ready < n && ctx.Err() == nil {
		p.log.Warn("reclaimed slots not all ready", zap.Int("ready", ready), zap.Int("slots", n))
	}
	return context.Cause(ctx)
}

// errOldPrimaryGone ends a roll of a take-over whose old primary died.
var errOldPrimaryGone = errors.New("the old primary is gone")

// oldPrimary is the primary a new one takes over from, watched through
// tableflip: its end of the pipe tableflip gave this process closes when
// it dies, and only then until this process is ready.
type oldPrimary struct {
	pid  int
	gone chan struct{} // closed once it has exited
	stop func()        // ends the watch (again: no-op); gone stays open if it has not
}

// watchOldPrimary watches the old primary, pid (0: this process's parent).
func (p *primary) watchOldPrimary(pid int) *oldPrimary {
	if pid <= 0 {
		pid = os.Getppid()
	}
	ctx, cancel := context.WithCancel(context.Background())
	o := &oldPrimary{pid: pid, gone: make(chan struct{})}
	done := make(chan struct{})
	var once sync.Once
	o.stop = func() { once.Do(func() { cancel(); <-done }) }
	go func() {
		defer close(done)
		if p.upg.WaitForParent(ctx) == nil || ctx.Err() == nil {
			close(o.gone)
		}
	}()
	return o
}

// isGone reports whether the old primary has been seen to exit.
func (o *oldPrimary) isGone() bool {
	select {
	case <-o.gone:
		return true
	default:
		return false
	}
}

// oldPrimaryGrace bounds how long after its hand-over connection broke
// (or could not be made) the old primary's death may take to show on
// tableflip's pipe: both close as the process exits.
const oldPrimaryGrace = 5 * time.Second

// goneAfter reports whether the old primary is gone, once pr (nil: no
// connection could be made) shows it may be: a connection that ended,
// or none. A connection still open means it is alive.
func (o *oldPrimary) goneAfter(pr *peer) bool {
	if pr != nil {
		select {
		case <-pr.closed:
		default:
			return o.isGone()
		}
	}
	t := time.NewTimer(oldPrimaryGrace)
	defer t.Stop()
	select {
	case <-o.gone:
		return true
	case <-t.C:
		return false
	}
}

// pidFileIsMine reports whether the pid file (if any) names this process.
func (p *primary) pidFileIsMine() bool {
	if p.cfg.PIDFile == "" {
		return true
	}
	b, err := os.ReadFile(p.cfg.PIDFile)
	return err == nil && strings.TrimSpace(string(b)) == strconv.Itoa(os.Getpid())
}

// retireAfterHandOver waits for the workers still draining, then returns
// so the old primary exits. Whatever still reaches this primary is passed
// on to the new one, which owns the listeners: pass (the signals of the
// jobs that were queued, see jobLoop), then HUP, TTIN and TTOU as they
// come; a TERM or INT, or the end of ctx (a stop asked for on the control
// socket before it stopped accepting), stops the new primary, and this
// one returns only once that has exited too (or did not in time), so
// that a stop answered means both have. A request that waits for an
// answer is told to ask the new primary (errHandedOver, see
// control.Server.HandedOver); a watched change is not passed on, since
// the new primary watches the same files.
func (p *primary) retireAfterHandOver(ctx context.Context, sigs <-chan os.Signal, pass []os.Signal) error {
	succ := p.successor
	p.log.Info("handed over", zap.Int("new_primary", succ.pid))
	p.ctl.HandedOver(succ.pid)
	p.cfg.Hub.handedOver()
	// The new primary serves --metrics now.
	p.web.close()
	defer succ.release()
	stopping := false
	forward := func(sig os.Signal) {
		s, ok := sig.(syscall.Signal)
		if !ok {
			return
		}
		if s == syscall.SIGTERM || s == syscall.SIGINT {
			if stopping {
				return
			}
			stopping = true
			p.log.Info("stopping the new primary", zap.Int("new_primary", succ.pid), zap.String("signal", s.String()))
		} else {
			p.log.Info("passed on to the new primary", zap.Int("new_primary", succ.pid), zap.String("signal", s.String()))
		}
		succ.signal(s)
	}
	for _, sig := range pass {
		forward(sig)
	}
	done := make(chan struct{})
	go func() {
		p.pool.Shutdown()
		close(done)
	}()
	ctxDone := ctx.Done()
	for {
		select {
		case sig := <-sigs:
			forward(sig)
		case <-ctxDone:
			ctxDone = nil
			forward(syscall.SIGTERM)
		case r := <-p.reqs:
			if r.run == nil && r.done == nil && r.op != opWatch {
				forward(syscall.SIGHUP)
			}
			if r.done != nil {
				r.done <- errHandedOver
			}
		case <-done:
			if stopping && !succ.wait(2*p.cfg.DrainTimeout+10*time.Second) {
				p.log.Warn("the new primary did not exit in time", zap.Int("new_primary", succ.pid))
			}
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
