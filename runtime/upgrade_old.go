//go:build linux

package runtime

import (
	"context"
	"fmt"
	"net"
	"os"
	goruntime "runtime"
	"strconv"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/handoff-dev/handoff/workerpool"
)

// The old primary's side of a self-upgrade: upgradeSelf runs its phases
// in order (the list, with what each sends and what ends it, is at the top
// of upgrade.go), then, once the loop has ended, retireAfterHandOver.

// oldSide is one self-upgrade as the old primary runs it: what its phases
// share. While upgrade waits in tableflip's Upgrade, other goroutines use
// it too: accept's, then the hand-over connection's (its reader calls
// handOver, a roll-back rollBack; passNewer), and guard's. Two locks guard
// what they change; the other fields are set before they start, or are
// upgradeSelf's own (timedOut, guard's, it reads once guard has ended).
type oldSide struct {
	p   *primary
	ctx context.Context
	gen int
	ln  *net.UnixListener // the hand-over socket
	// cur and prev are the generations handed over (nil: not handed over).
	cur, prev *generationToken
	// bound is the pool's as the upgrade starts, scaled or not. Once it
	// has passed, no more slot is handed over (expired, under hmu), so
	// that the new primary cannot become ready (and take over) as it is
	// being killed.
	bound   time.Duration
	hmu     sync.Mutex // guards expired
	expired bool

	mu      sync.Mutex // guards newProc, rolledBack, rollbackErr
	newProc *process   // the connected new primary, unless ctx ended first
	// rolledBack counts the slots the new primary had taken over when it
	// asked for a roll-back; rollbackErr is how that went.
	rolledBack  int
	rollbackErr error

	accepted   chan newPrimaryConn // accept's connection, if it made one
	acceptDone chan struct{}       // closed as accept returns
	upgraded   chan struct{}       // closed as Upgrade has returned
	guardDone  chan struct{}       // closed as guard returns
	timedOut   bool                // guard's: read once guardDone is closed
	upErr      error               // Upgrade's outcome (settle may say more)
	conn       newPrimaryConn      // set by settle
}

// newPrimaryConn is the new primary that connected: its end of the
// hand-over, and the process, held by its pidfd.
type newPrimaryConn struct {
	peer *peer
	proc *process
}

// upgradeSelf starts the executable now on disk as a new primary through
// tableflip and hands the workers over to it, slot by slot. It returns nil
// once the new primary owns everything.
func (p *primary) upgradeSelf(ctx context.Context, gen int) error {
	if err := p.upg.WaitForParent(ctx); err != nil {
		return fmt.Errorf("the previous primary has not exited yet: %v", err)
	}
	s, err := p.offerHandOver(ctx, gen)
	if err != nil {
		return err
	}
	defer os.Unsetenv(envHandover)
	defer os.Unsetenv(envHandoverState)
	s.upgrade()
	s.settle()
	if s.upErr == nil {
		return s.handedOver()
	}
	return s.takeBack()
}

// offerHandOver opens the hand-over socket and leaves in the environment
// and tableflip's descriptors what the new primary starts from.
func (p *primary) offerHandOver(ctx context.Context, gen int) (*oldSide, error) {
	ln, err := listenHandover(p.dir)
	if err != nil {
		return nil, err
	}
	s := &oldSide{p: p, ctx: ctx, gen: gen, ln: ln,
		accepted: make(chan newPrimaryConn, 1), acceptDone: make(chan struct{}),
		upgraded: make(chan struct{}), guardDone: make(chan struct{})}
	// The new primary keeps this one's generations, pinned files and all.
	s.cur, s.prev = p.exportGenerations()
	os.Setenv(envHandover, ln.Addr().String())
	// The state again, for a new primary that finds this one dead before
	// it could ask.
	os.Setenv(envHandoverState, encodeState(os.Getpid(), gen, p.pool.Size()))
	s.bound = p.upgradeBound()
	return s, nil
}

// upgrade starts the new primary and waits in tableflip's Upgrade until it
// is ready or gone, answering its hand-over (accept) and holding it to the
// bound and to a shutdown (guard) meanwhile.
func (s *oldSide) upgrade() {
	go s.accept()
	go s.guard()
	s.upErr = s.p.sockets.Export(s.p.upg.Fds.AddFile, s.p.pool.SlotSockets())
	if s.upErr == nil {
		s.upErr = s.p.upg.Upgrade()
	}
}

// accept waits for the new primary's connection and serves its end of the
// hand-over: the state first, then its asks (peer.read), and a newer
// deploy's end of its probation.
func (s *oldSide) accept() {
	defer close(s.acceptDone)
	p := s.p
	conn, pid, err := acceptHandover(s.ln)
	if err != nil {
		return
	}
	proc := openProcess(pid)
	if !s.connected(proc) {
		conn.Close()
		proc.release()
		return
	}
	p.book.updateDeploy(func(u *UpgradeStatus) { u.NewPrimary = pid })
	var pr *peer
	pr = newPeer(conn, s.handOver, func() error { return s.rollBack(pr, pid) }, p.book.deployStep)
	s.accepted <- newPrimaryConn{pr, proc}
	pr.send(message{Op: "state", Generation: s.gen, Size: p.pool.Size(), Current: s.cur, Previous: s.prev})
	go s.passNewer(pr, pid)
}

// connected records proc as the connected new primary, unless ctx has
// ended (then it reports false: the new primary is not answered).
func (s *oldSide) connected(proc *process) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ctx.Err() != nil {
		return false
	}
	s.newProc = proc
	return true
}

// connectedProc is the connected new primary (nil: none yet).
func (s *oldSide) connectedProc() *process {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.newProc
}

// handOver answers the new primary's retire{slot}: the slot is handed
// over, unless the bound has passed.
func (s *oldSide) handOver(slot int) error {
	s.hmu.Lock()
	defer s.hmu.Unlock()
	if s.expired {
		return fmt.Errorf("the upgrade took longer than %s", s.bound)
	}
	return s.p.pool.HandOver(slot)
}

// rollBack answers the new primary's rollback: the slots it took over
// come back, one at a time, each of its workers retired through pr.
func (s *oldSide) rollBack(pr *peer, pid int) error {
	if err := s.ctx.Err(); err != nil {
		// Shutting down: the new primary drains what it has.
		return err
	}
	p := s.p
	p.log.Info("rolling back a failed hand-over", zap.Int("new_primary", pid))
	n := p.pool.Remote()
	err := p.pool.RollBack(s.ctx, pr.retire)
	s.mu.Lock()
	s.rolledBack, s.rollbackErr = n, err
	s.mu.Unlock()
	return err
}

// passNewer tells the new primary of a deploy asked for here (the pid
// file still names this primary): it ends its probation, as it would this
// one's, and takes over at once; the deploy, passed on at the hand-over
// (or asked of it again: see retireAfterHandOver), runs there next.
func (s *oldSide) passNewer(pr *peer, pid int) {
	select {
	case <-newerDeploy(s.ctx):
		s.p.log.Info("ending the new primary's probation: a newer deploy was asked for", zap.Int("new_primary", pid))
		pr.send(message{Op: "newer"})
	case <-pr.closed: // closed as upgradeSelf returns
	}
}

// guard holds the new primary to the bound and to a shutdown until
// Upgrade returns. tableflip's Upgrade takes no context. On a shutdown
// asked for meanwhile, a connected new primary gets TERM: it ends the
// hand-over and drains its workers like any primary that shuts down. Only
// one that has not connected yet (it has no worker), or does not exit in
// time, is killed, with its workers, by stopping the upgrader. One that
// is not ready within the bound is killed (its workers die with it), as
// tableflip's own bound would.
func (s *oldSide) guard() {
	defer close(s.guardDone)
	deadline := time.NewTimer(s.bound)
	defer deadline.Stop()
	select {
	case <-s.ctx.Done():
		s.stopOnShutdown()
	case <-deadline.C:
		s.timedOut = s.p.killLateNewPrimary(s.connectedProc(), s.ln.Addr().String(), s.bound, s.p.stopGrace(), s.upgraded, s.expire)
	case <-s.upgraded:
	}
}

// stopOnShutdown is guard's on the end of ctx: TERM to a connected new
// primary, and the upgrader stopped unless it has exited in time.
func (s *oldSide) stopOnShutdown() {
	p := s.p
	proc := s.connectedProc()
	if proc != nil && proc.signal(syscall.SIGTERM) == nil {
		p.log.Info("stopping the new primary", zap.Int("new_primary", proc.pid))
		t := time.NewTimer(2*p.cfg.DrainTimeout + 10*time.Second)
		defer t.Stop()
		select {
		case <-s.upgraded:
			return
		case <-t.C:
			p.log.Warn("the new primary did not exit in time, killing it", zap.Int("new_primary", proc.pid))
		}
	}
	p.upg.Stop()
}

// expire stops handing over slots once the bound has passed, and reports
// whether the new primary still lacks some (see killLateNewPrimary).
func (s *oldSide) expire() bool {
	s.hmu.Lock()
	defer s.hmu.Unlock()
	// Every slot handed over: its Ready is on its way.
	s.expired = s.p.pool.Remote() < s.p.pool.Size()
	return s.expired
}

// settle ends what upgrade started, once Upgrade has returned: guard, the
// hand-over socket and accept. conn is then the new primary that
// connected, if one did.
func (s *oldSide) settle() {
	close(s.upgraded)
	// Nothing signals the new primary from here on: its pidfd may close.
	<-s.guardDone
	if s.upErr != nil && s.timedOut {
		s.upErr = fmt.Errorf("not ready within %s: %v", s.bound, s.upErr)
	}
	s.ln.Close()
	<-s.acceptDone
	select {
	case s.conn = <-s.accepted: // always, if the new primary became ready
	default:
	}
}

// handedOver ends an upgrade whose new primary is ready: it is the main
// process to systemd now, and this primary's successor.
func (s *oldSide) handedOver() error {
	if s.conn.proc != nil {
		// Still the main process to systemd, this primary hands that
		// over itself, so its exit is never taken for the service's
		// (NotifyAccess=main accepts only the main process's messages),
		// then lets the new primary say READY=1.
		notifySystemd("MAINPID=" + strconv.Itoa(s.conn.proc.pid))
		if s.conn.peer != nil {
			s.conn.peer.send(message{Op: "mainpid"})
		}
	}
	s.closeConn()
	s.p.successor = s.conn.proc
	return nil
}

// takeBack ends an upgrade whose new primary failed or is gone: this
// primary serves alone again, every slot its own.
func (s *oldSide) takeBack() error {
	p := s.p
	s.closeConn()
	s.conn.proc.release()
	// The new primary is gone: this one steers its sockets again.
	p.sockets.Thaw()
	p.pool.Steer()
	// tableflip drops, without closing them, the pipe ends it gave the
	// new primary: their finalizers close them once collected. Collect
	// now, or every failed upgrade leaves two descriptors more.
	goruntime.GC()
	// The new primary is gone, and its workers with it: refill whatever
	// it had taken over and did not roll back.
	if n := p.pool.Remote(); n > 0 && s.ctx.Err() == nil {
		p.log.Warn("reclaiming slots from the failed new primary", zap.Int("slots", n))
		p.pool.Reclaim(s.ctx, nil)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rolledBack > 0 {
		return &workerpool.RolledBackError{Cause: fmt.Errorf("new primary: %w", s.upErr), Slots: s.rolledBack, Err: s.rollbackErr}
	}
	return s.upErr
}

// closeConn closes the hand-over connection, if any, and waits for its
// reader and any roll-back: nothing from the hand-over may act on the pool
// once upgradeSelf returns.
func (s *oldSide) closeConn() {
	if s.conn.peer != nil {
		s.conn.peer.close()
		s.conn.peer.wait()
	}
}

// retireAfterHandOver waits for the workers still draining, then returns
// so the old primary exits. Whatever still reaches this primary is passed
// on to the new one, which owns the listeners: pass (the signals of the
// jobs that were queued, see jobLoop), then HUP, TTIN and TTOU as they
// come; a TERM or INT, or the end of ctx (a stop asked for on the control
// socket before it stopped accepting), stops the new primary, and this
// one returns only once that has exited too (or did not in time), so
// that a stop answered means both have. A request that waits for an
// answer is told to ask the new primary (errHandedOver: see
// controlHandler.await); a watched change is not passed on, since
// the new primary watches the same files.
func (p *primary) retireAfterHandOver(ctx context.Context, sigs <-chan os.Signal, pass []os.Signal) error {
	succ := p.successor
	p.log.Info("handed over", zap.Int("new_primary", succ.pid))
	p.ctl.HandedOver(succ.pid)
	p.cfg.Hub.handedOver()
	// The new primary serves --metrics now.
	p.web.Close()
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
