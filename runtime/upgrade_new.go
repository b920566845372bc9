//go:build linux

package runtime

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/handoff-dev/handoff/internal/pin"
	"github.com/handoff-dev/handoff/workerpool"
)

// The new primary's side of a self-upgrade: takeOver runs its phases in
// order (the list, with what each sends and what ends it, is at the top
// of upgrade.go).

// newSide is one take-over as the new primary runs it: what its phases
// share. Only takeOver's goroutine changes it (roll's function runs in
// underSignals' goroutine while takeOver waits).
type newSide struct {
	p         *primary
	ctx       context.Context
	sigs      <-chan os.Signal
	path      string       // the worker command, resolved
	metricsLn net.Listener // nil without --metrics
	addr      string       // the hand-over socket
	// st is the old primary's state: its state message, or the one it
	// left in the environment.
	st  message
	old *oldPrimary
	// pr is the hand-over connection; nil if there is none, or the old
	// primary died before it sent its state.
	pr    *peer
	start time.Time
	// oldCur and oldPrev are the old primary's generations (nil: not
	// handed over).
	oldCur, oldPrev *generation
	pf              *pin.File // the worker command, pinned
	spec            *workerpool.Spec
	// queue holds what was asked for during the roll; shutdownSig is the
	// signal (or the end of ctx, as TERM) that ended it.
	queue       jobQueue
	shutdownSig os.Signal
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
	s := &newSide{p: p, ctx: ctx, sigs: sigs, path: path, metricsLn: metricsLn}
	if err := s.inherit(); err != nil {
		return err
	}
	defer s.old.stop()
	pr, err := s.hello()
	if pr != nil {
		// Its reader may be retiring a worker: it ends before Run returns.
		defer func(pr *peer) { pr.close(); pr.wait() }(pr)
	}
	if err != nil {
		return err
	}
	if err := s.prepare(); err != nil {
		return err
	}
	s.adopt()
	err = s.roll()
	if err == nil {
		err = p.readyAfterTakeOver(s.old)
	}
	if err != nil {
		return s.abort(err)
	}
	return s.serve()
}

// inherit takes what the old primary left in the environment, and starts
// watching it.
func (s *newSide) inherit() error {
	s.addr = os.Getenv(envHandover)
	os.Unsetenv(envHandover)
	s.st = handoverState(os.Getenv(envHandoverState), s.p.cfg.Workers)
	os.Unsetenv(envHandoverState)
	if s.addr == "" {
		return errors.New("started by an upgrade but no hand-over socket was given")
	}
	s.old = s.p.watchOldPrimary(s.st.Pid)
	return nil
}

// hello connects to the old primary and waits for its state. It returns
// the connection it made (nil: none), which takeOver closes as it
// returns; pr is left nil if the old primary turns out dead.
func (s *newSide) hello() (*peer, error) {
	pr, err := s.p.connect(s.ctx, s.addr)
	if err == nil {
		var m message
		if m, err = pr.await(s.ctx, "state"); err == nil {
			s.st = m
		}
	}
	if err != nil {
		if !s.old.goneAfter(pr) {
			return pr, err
		}
		// Dead before it told its state: the one it put in the
		// environment says the same.
		return pr, nil
	}
	s.pr = pr
	return pr, nil
}

// prepare takes the old primary's generation, generations and size, and
// pins the worker command.
func (s *newSide) prepare() error {
	p := s.p
	p.gen = s.st.Generation
	s.start = time.Now()
	pf, err := p.pinCommand(s.path)
	if err != nil {
		return fmt.Errorf("upgrade aborted: cannot pin the worker command: %v", err)
	}
	s.pf = pf
	// The old primary's generations: what a rollback goes back to.
	s.oldCur, s.oldPrev = p.importGeneration(s.st.Current), p.importGeneration(s.st.Previous)
	p.log.Info("taking over", zap.Int("generation", p.gen), zap.Int("old_primary", s.old.pid), zap.Int("workers", s.st.Size))
	if s.st.Size > 0 && s.st.Size != p.pool.Size() {
		// The old primary's pool, scaled or not.
		if err := p.pool.Scale(s.ctx, s.st.Size, nil); err != nil {
			return fmt.Errorf("upgrade aborted: %v", err)
		}
	}
	return nil
}

// adopt makes every slot the old primary's, its workers' sockets steered
// to until this primary's replace them.
func (s *newSide) adopt() {
	p := s.p
	p.pool.Adopt()
	for slot, set := range p.sockets.Imported() {
		// Steered to until this primary's worker replaces it.
		p.pool.AdoptSockets(slot, set)
	}
	if p.sockets != nil {
		// The old workers' sockets close once nothing can accept from
		// them: when the old primary, which waits for its workers, is
		// gone.
		go func() {
			if p.upg.WaitForParent(s.ctx) == nil || s.ctx.Err() == nil {
				p.sockets.OldGone()
			}
		}()
	}
	s.spec = p.spec(s.path, p.gen)
	s.spec.Pin = s.pf
}

// roll rolls every slot onto this primary's workers (rollFrom), or
// reclaims them once the old primary is gone (reclaimFrom). A TERM or INT
// ends the roll; the slots taken are handed back (unless the old primary
// is shutting down too, or is gone) and the workers drained.
func (s *newSide) roll() error {
	p := s.p
	var err error
	s.queue, s.shutdownSig, err = p.underSignals(s.ctx, s.sigs, "the primary is taking over", func(ctx context.Context) error {
		if s.pr != nil {
			err := s.rollFrom(ctx)
			if err == nil || !s.old.goneAfter(s.pr) {
				return err
			}
		}
		return s.reclaimFrom(ctx)
	})
	if s.old.isGone() {
		// Nobody else will close the listeners, nor remove the unix
		// socket files, when this primary stops.
		p.owner = true
	}
	if s.shutdownSig != nil {
		// Told to stop: this primary does not take over, even if every
		// slot is already its own.
		err = fmt.Errorf("shutdown asked for (%v)", s.shutdownSig)
	}
	return err
}

// rollFrom rolls every slot from the old primary's workers to this one's,
// asking the old primary to retire each as its replacement is ready. If
// the old primary dies meanwhile, the roll stops at once (its worker
// starting is retired: Reclaim starts one with the others).
func (s *newSide) rollFrom(ctx context.Context) error {
	p, pr := s.p, s.pr
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case <-s.old.gone:
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
	return p.pool.RollWith(ctx, s.spec, workerpool.RollOptions{
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
func (s *newSide) reclaimFrom(ctx context.Context) error {
	p := s.p
	n := p.pool.Remote()
	p.log.Warn("old primary gone", zap.Int("old_primary", s.old.pid), zap.Int("slots", n))
	if ready := p.pool.Reclaim(ctx, s.spec); ready < n && ctx.Err() == nil {
		p.log.Warn("reclaimed slots not all ready", zap.Int("ready", ready), zap.Int("slots", n))
	}
	return context.Cause(ctx)
}

// abort ends a take-over that failed with err, or was told to stop: the
// old primary, if it lives, takes the slots back, and this primary's
// workers drain.
func (s *newSide) abort(err error) error {
	p := s.p
	s.queue.finish(ErrShuttingDown)
	p.logAbort(p.gen, err)
	if p.pool.Remote() < p.pool.Size() && s.pr != nil && !s.old.isGone() {
		s.handBack()
	}
	if s.shutdownSig != nil {
		return p.shutdown()
	}
	p.pool.Shutdown()
	return fmt.Errorf("upgrade aborted: %v", err)
}

// handBack asks the old primary to take back the slots that are this
// primary's already, one at a time, before this one goes.
func (s *newSide) handBack() {
	p := s.p
	rctx, cancel := context.WithTimeout(s.ctx, time.Duration(p.pool.Size()+1)*p.cfg.ReadyTimeout)
	if serr := s.pr.send(message{Op: "rollback"}); serr == nil {
		if _, rerr := s.pr.await(rctx, "rolledback"); rerr != nil {
			p.log.Warn("roll-back incomplete", zap.Error(rerr))
		}
	}
	cancel()
}

// serve ends a take-over that succeeded: this primary owns the listeners,
// the slots and the generations, tells systemd so, and runs the job loop.
func (s *newSide) serve() error {
	p := s.p
	p.owner = true
	p.cur = &generation{gen: p.gen, spec: s.spec}
	// The old primary's current generation is the previous one, unless
	// this one runs the same file (only handoff itself changed).
	p.prev = s.oldCur
	if sameBuild(p.cur, s.oldCur) {
		p.prev = s.oldPrev
	}
	p.keepGenerations()
	p.book.setServing(p.gen)
	if s.pr != nil {
		// systemd takes this primary's READY=1 once the old one has made
		// it the main process (or has gone: then MAINPID= below does).
		actx, cancel := context.WithTimeout(s.ctx, mainPIDWait)
		s.pr.await(actx, "mainpid")
		cancel()
	}
	s.old.stop()
	notifySystemd("MAINPID=" + strconv.Itoa(os.Getpid()) + "\nREADY=1\nSTATUS=serving generation " + strconv.Itoa(p.gen))
	if s.metricsLn != nil {
		// The old primary answered until now and stops at the hand-over;
		// both accept on the one socket meanwhile, so no scrape or probe
		// finds it closed.
		p.web.Serve(s.metricsLn, p.log)
	}
	p.metrics.Deployed(kindPrimary, outcomeDone, time.Since(s.start), p.gen)
	p.log.Info("upgrade finished", zap.Int("generation", p.gen), zap.Duration("duration", time.Since(s.start)))
	p.log.Info("primary ready", zap.Int("workers", p.pool.Size()), zap.Int("generation", p.gen))
	if s.pr != nil {
		s.pr.close()
	}
	// The old primary has stopped accepting on the control socket, or
	// will once it sees this primary ready: answer it from now on.
	p.ctl.Serve()
	return p.loop(s.ctx, s.sigs, s.queue)
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
