package workerpool

import (
	"context"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"
)

type worker struct {
	proc     Process
	slot     int
	gen      int
	started  time.Time
	log      *zap.Logger
	ready    bool
	readyAt  time.Time
	retiring bool
	killed   bool // the pool sent SIGKILL
	// socks are the worker's own listening sockets (nil without
	// Config.Sockets).
	socks *sockRef
	// readyOnce logs readiness exactly once, before anything acts on it:
	// the event stream then never shows an old worker retired before its
	// replacement was ready.
	readyOnce sync.Once
	// reaped is closed by the monitor once the exit is logged and the
	// pool's records updated: what follows a failed start comes after its
	// "worker exited" in the event stream.
	reaped chan struct{}
}

// noteReady records and logs that w is ready.
func (p *Pool) noteReady(w *worker) {
	w.readyOnce.Do(func() {
		p.mu.Lock()
		w.ready, w.readyAt = true, time.Now()
		p.steerLocked()
		p.mu.Unlock()
		took := time.Since(w.started)
		w.log.Info("worker ready", zap.Duration("took", took))
		p.cfg.Observer.WorkerReady(w.slot, took)
	})
}

// launch starts a worker for slot i. hold is the state the slot takes with
// the worker as its own at once: slotStarting (Start) or slotServing (a
// restart). With slotEmpty the worker runs beside the slot until it is
// ready and installed (a roll, Replace, a growing Scale).
//
// The fork and exec (Launcher.Launch) run without the pool's lock, so
// that status, /readyz and exits are not held up by them: the slot is
// reserved before (see slot.reserve), and the worker recorded after. A
// worker whose slot was taken meanwhile, or forked once Shutdown began
// (which waits for every launch), is retired at once, and errSlotTaken
// or ErrClosing returned.
func (p *Pool) launch(i int, spec *Spec, hold slotState) (*worker, error) {
	w := &worker{slot: i, gen: spec.Generation, reaped: make(chan struct{})}
	p.mu.Lock()
	prev, err := p.reserveLocked(w, hold)
	if err != nil {
		p.mu.Unlock()
		return nil, err
	}
	var fds []int
	if w.socks != nil {
		fds = w.socks.s.FDs()
	}
	// Shutdown waits for this launch, and so for the worker it forks.
	p.monitors.Add(1)
	defer p.monitors.Done()
	p.mu.Unlock()

	proc, err := p.cfg.Launcher.Launch(i, spec, fds)

	closing, taken, err := p.record(w, spec, hold, prev, proc, err)
	switch {
	case err != nil:
		return nil, err
	case closing:
		p.retire(w, "shutdown")
		return nil, ErrClosing
	case taken:
		p.retire(w, "not needed: the slot changed")
		return nil, errSlotTaken
	}
	return w, nil
}

// reserveLocked is launch's first step, with p.mu held: unless hold is
// slotEmpty, slot w.slot is reserved for w (prev is its state before),
// and w gets its own sockets.
func (p *Pool) reserveLocked(w *worker, hold slotState) (prev slotState, err error) {
	i := w.slot
	if p.closing {
		return prev, ErrClosing
	}
	if hold != slotEmpty {
		if !p.slots[i].vacant() {
			// A roll or a hand-over took the slot since the restart was
			// decided.
			return prev, errSlotTaken
		}
		prev = p.slots[i].reserve(w, hold)
	}
	socks, err := p.newSocksLocked(i, hold)
	if err != nil {
		if hold != slotEmpty {
			p.slots[i].unreserve(w, hold, prev)
		}
		return prev, cannotStart(i, err)
	}
	w.socks = socks
	useSocksLocked(socks)
	return prev, nil
}

// record is launch's last step, once w is forked as proc (or failed to
// be: err): w becomes one of the pool's workers, holds its slot if still
// reserved for it, and is monitored. It reports whether the pool is
// closing, and whether the slot was taken meanwhile (w is then retired by
// launch).
func (p *Pool) record(w *worker, spec *Spec, hold, prev slotState, proc Process, err error) (closing, taken bool, _ error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	i := w.slot
	s := p.slots[i]
	if err != nil {
		if hold != slotEmpty {
			s.unreserve(w, hold, prev)
		}
		p.releaseSocksLocked(w.socks)
		return false, false, cannotStart(i, err)
	}
	w.proc, w.started = proc, time.Now()
	w.log = p.log.With(zap.Int("slot", i), zap.Int("pid", proc.Pid()), zap.Int("generation", spec.Generation))
	p.all[w] = struct{}{}
	taken = hold != slotEmpty && !s.reservedFor(w, hold)
	if hold != slotEmpty && !taken {
		s.hold(w, spec, hold)
		p.keepSocksLocked(s, w.socks)
	}
	closing = p.closing
	w.log.Info("worker spawned")
	p.cfg.Observer.WorkerStarted(i)
	p.monitors.Add(1)
	go p.monitor(w)
	return closing, taken, nil
}

// cannotStart is the failure of slot i's launch before a worker forked.
func cannotStart(i int, err error) *StartError {
	return &StartError{Slot: i, Reason: "cannot start: " + err.Error()}
}

// monitor follows one worker from start to reap.
func (p *Pool) monitor(w *worker) {
	defer p.monitors.Done()
	defer close(w.reaped)
	select {
	case <-w.proc.Ready():
		p.noteReady(w)
	case <-w.proc.Done():
	}
	<-w.proc.Done()
	exit := w.proc.Exit()

	p.mu.Lock()
	delete(p.all, w)
	s := p.slots[w.slot]
	unexpected := s.cur == w && !w.retiring
	now := time.Now()
	// A new worker that fails its deploy's probation is not restarted:
	// that would run the failed build again (see RollWith). The last
	// slot's old worker, if it stands by, takes its slot back at once.
	// One that exits after its own probation is restarted as any other.
	failed := unexpected && p.prob.fails(w, now)
	lost := unexpected && s.lost(w, p.closing)
	if lost && failed {
		p.takeBack(p.prob, w)
	}
	restart := lost && !failed
	// Its sockets: kept by a slot that waits for a restart, with what
	// queues on them meanwhile, else closed once steered away from (a
	// socket that is the only one served cannot close).
	p.steerLocked()
	p.releaseSocksLocked(w.socks)
	fields := []zap.Field{zap.String("status", exit.Status), zap.Duration("uptime", exit.Uptime)}
	if unexpected && exit.StderrTail != "" {
		fields = append(fields, zap.String("stderr", exit.StderrTail))
	}
	switch {
	case failed:
		w.log.Warn("worker exited", fields...)
		p.failProbation(p.prob, w, exit, now.Sub(w.readyAt), false)
	case restart:
		w.log.Warn("worker exited", fields...)
		if exit.Uptime >= p.cfg.StableAfter {
			s.failures = 0
		}
		s.failures++
		p.scheduleBackoffLocked(w.slot)
	default:
		w.log.Info("worker exited", fields...)
	}
	cause := ExitRetired
	switch {
	case w.killed:
		cause = ExitKilled
	case !w.retiring:
		cause = ExitCrashed
	}
	p.cfg.Observer.WorkerExited(w.slot, cause)
	p.mu.Unlock()
}

// waitReady waits until w is ready and returns "", or returns why not:
// it exited, deadline fired, or ctx ended.
func (p *Pool) waitReady(ctx context.Context, w *worker, deadline <-chan time.Time) string {
	select {
	case <-w.proc.Ready():
		p.noteReady(w)
		return ""
	case <-w.proc.Done():
		return "exited"
	case <-deadline:
		if nr, ok := w.proc.(interface{ NotReady() string }); ok && nr.NotReady() != "" {
			return fmt.Sprintf("not ready within %s (%s)", p.cfg.ReadyTimeout, nr.NotReady())
		}
		return fmt.Sprintf("not ready within %s", p.cfg.ReadyTimeout)
	case <-ctx.Done():
		return "cancelled: " + context.Cause(ctx).Error()
	}
}

// waitEachReady waits, under one ReadyTimeout, until each of ws in turn
// is ready, and tells each the worker and why it is not ("" once it is;
// see waitReady).
func (p *Pool) waitEachReady(ctx context.Context, ws []*worker, each func(w *worker, reason string)) {
	deadline := time.NewTimer(p.cfg.ReadyTimeout)
	defer deadline.Stop()
	for _, w := range ws {
		each(w, p.waitReady(ctx, w, deadline.C))
	}
}

// launchReady starts a worker for slot i that does not hold the slot yet,
// waits until it is ready (see awaitReady), then runs take with p.mu held,
// so that the worker takes the slot (take calls the slot's install) before
// anything else sees the slot. A worker that was ready and then exited
// before that is a failed start, not a dead worker left holding the slot.
// If take refuses (returns an error), the worker is retired as not needed
// and take's error returned.
func (p *Pool) launchReady(ctx context.Context, i int, spec *Spec, take func(s *slot, w *worker) error) error {
	w, err := p.launch(i, spec, slotEmpty)
	if err != nil {
		return err
	}
	if err := p.awaitReady(ctx, w); err != nil {
		return err
	}
	p.mu.Lock()
	if _, alive := p.all[w]; !alive {
		p.mu.Unlock()
		return w.startError("exited")
	}
	err = take(p.slots[i], w)
	p.steerLocked()
	p.mu.Unlock()
	if err != nil {
		p.retire(w, "not needed: the slot changed")
	}
	return err
}

// awaitReady waits until w is ready. If it exits, is not ready within
// ReadyTimeout, or ctx ends first, it is retired (stop signal, then SIGKILL
// after DrainTimeout) and reaped, and a *StartError (or ctx's cause) is
// returned.
func (p *Pool) awaitReady(ctx context.Context, w *worker) error {
	t := time.NewTimer(p.cfg.ReadyTimeout)
	defer t.Stop()
	reason := p.waitReady(ctx, w, t.C)
	if reason == "" {
		return nil
	}
	if ctx.Err() != nil && reason != "exited" {
		// Shutting down: this worker drains alongside all the others
		// (Shutdown waits for it) rather than before them.
		p.retire(w, "not started: "+reason)
		return context.Cause(ctx)
	}
	p.retireAndWait([]*worker{w}, "not started: "+reason)
	return w.startError(reason)
}

// startError is w, which did not get ready (reason), as its start's
// failure, with how it exited if it did.
func (w *worker) startError(reason string) *StartError {
	return &StartError{Slot: w.slot, Pid: w.proc.Pid(), Reason: reason, Exit: w.proc.Exit()}
}

// retire asks w to drain and kills it after DrainTimeout.
func (p *Pool) retire(w *worker, reason string) {
	p.retireWithin(w, reason, p.cfg.DrainTimeout)
}

// retireWithin is retire with drain instead of DrainTimeout.
func (p *Pool) retireWithin(w *worker, reason string, drain time.Duration) {
	p.mu.Lock()
	if w.retiring {
		p.mu.Unlock()
		return
	}
	w.retiring = true
	p.steerLocked()
	steered := w.socks != nil && !p.closing
	p.mu.Unlock()
	if exited(w) {
		return // it has exited already: nothing to retire
	}
	if !steered {
		p.stop(w, reason, drain)
		return
	}
	// Steered away above: it is retiring from now on, and gets the stop
	// signal once nothing more can reach it.
	w.log.Info("worker retiring", append(p.retireFields(reason, drain), zap.Bool("steered_away", true))...)
	p.monitors.Add(1)
	go func() {
		defer p.monitors.Done()
		p.drainSocks(w)
		p.signalStop(w, drain)
	}()
}

// retireFields are the fields of a "worker retiring" event.
func (p *Pool) retireFields(reason string, drain time.Duration) []zap.Field {
	fields := []zap.Field{zap.String("reason", reason)}
	if drain != p.cfg.DrainTimeout {
		fields = append(fields, zap.Duration("drain_timeout", drain))
	}
	return fields
}

// stop sends w the stop signal, and SIGKILL if it has not exited drain
// later.
func (p *Pool) stop(w *worker, reason string, drain time.Duration) {
	if exited(w) {
		return
	}
	w.log.Info("worker retiring", p.retireFields(reason, drain)...)
	p.signalStop(w, drain)
}

// signalStop sends w the stop signal, and SIGKILL if it has not exited
// drain later.
func (p *Pool) signalStop(w *worker, drain time.Duration) {
	if exited(w) {
		return
	}
	if err := w.proc.Signal(p.cfg.StopSignal); err != nil {
		return
	}
	p.monitors.Add(1)
	go func() {
		defer p.monitors.Done()
		t := time.NewTimer(drain)
		defer t.Stop()
		select {
		case <-w.proc.Done():
		case <-t.C:
			w.log.Warn("worker did not drain in time, killing it", zap.Duration("drain_timeout", drain))
			p.kill(w)
		}
	}()
}

// kill sends SIGKILL to w and remembers that the pool killed it.
func (p *Pool) kill(w *worker) {
	p.mu.Lock()
	w.killed = true
	p.mu.Unlock()
	w.proc.Kill()
}

// retireAndWait retires workers that failed to start and waits until they
// have exited. They get the stop signal and the drain timeout like any
// retired worker, not SIGKILL at once: one that was not ready may still
// have accepted connections on the shared socket, and its clients must
// get their answers.
func (p *Pool) retireAndWait(ws []*worker, reason string) {
	p.mu.Lock()
	for _, w := range ws {
		p.slots[w.slot].drop(w)
	}
	p.mu.Unlock()
	for _, w := range ws {
		p.retire(w, reason)
	}
	for _, w := range ws {
		<-w.reaped
	}
}
