// Package workerpool runs the worker processes of a primary: a number of
// slots (changed only by Scale), each held by one worker; dead workers are restarted with
// backoff, and a roll replaces every slot's worker one at a time so that at
// no moment fewer than Size workers are ready and not draining.
package workerpool

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// Config is a pool's fixed settings.
type Config struct {
	// Size is the number of slots (workers serving at steady state).
	Size int
	// Launcher starts workers.
	Launcher Launcher
	// ReadyTimeout bounds how long a new worker may take to become ready.
	ReadyTimeout time.Duration
	// DrainTimeout is how long a retiring worker has after StopSignal
	// before it is killed.
	DrainTimeout time.Duration
	// StopSignal asks a worker to drain and exit.
	StopSignal syscall.Signal
	// BackoffMin is the delay before the second restart in a row of a slot
	// (the first is immediate); it doubles up to BackoffMax. A worker that
	// stays up StableAfter resets the count.
	BackoffMin, BackoffMax, StableAfter time.Duration
	// Logger gets one event per lifecycle step.
	Logger *zap.Logger
	// Observer, if not nil, is told of every worker's start, readiness,
	// restart and exit (metrics).
	Observer Observer
}

// Observer is told of the pool's lifecycle events as they happen. Its
// methods are called from the pool's goroutines, sometimes with the pool's
// lock held: they must return at once and must not call the pool.
type Observer interface {
	// WorkerStarted: a worker was forked for slot.
	WorkerStarted(slot int)
	// WorkerReady: a worker became ready took after it was started.
	WorkerReady(slot int, took time.Duration)
	// WorkerRestarted: slot's worker is being restarted after it crashed.
	WorkerRestarted(slot int)
	// WorkerExited: a worker was reaped; cause is one of the Exit* causes.
	WorkerExited(slot int, cause string)
}

// Why a worker exited, as told to Observer.WorkerExited.
const (
	// ExitCrashed: it exited without being asked to (at any time, also
	// before it was ready).
	ExitCrashed = "crashed"
	// ExitRetired: it exited after the stop signal (replaced, handed over,
	// shut down, or a failed start stopped).
	ExitRetired = "retired"
	// ExitKilled: the pool killed it (it did not drain in time, or it hung).
	ExitKilled = "killed"
)

type nopObserver struct{}

func (nopObserver) WorkerStarted(int)              {}
func (nopObserver) WorkerReady(int, time.Duration) {}
func (nopObserver) WorkerRestarted(int)            {}
func (nopObserver) WorkerExited(int, string)       {}

// Defaults for Config's zero values.
const (
	DefaultBackoffMin  = 100 * time.Millisecond
	DefaultBackoffMax  = 10 * time.Second
	DefaultStableAfter = 10 * time.Second
)

// Pool runs the workers. Its methods are safe for concurrent use, but Start
// and Roll must not run at the same time as each other (the primary runs
// deploys one at a time).
type Pool struct {
	cfg Config
	log *zap.Logger

	mu sync.Mutex
	// slots[:size] are in use; those past size were removed by Scale and
	// hold nothing but the memory of their draining workers' slot.
	slots    []*slot
	size     int
	all      map[*worker]struct{} // every worker not yet reaped
	serving  bool                 // after Start: unexpected exits are restarted
	closing  bool
	monitors sync.WaitGroup // one per live worker and per drain timer
}

type slot struct {
	cur      *worker
	spec     *Spec
	remote   bool // held by a worker of another primary (hand-over)
	failures int
	restarts int // crash restarts of this slot so far
	restart  *time.Timer
}

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
		p.mu.Unlock()
		took := time.Since(w.started)
		w.log.Info("worker ready", zap.Duration("took", took))
		p.cfg.Observer.WorkerReady(w.slot, took)
	})
}

// New returns a pool with Size empty slots.
func New(cfg Config) *Pool {
	if cfg.BackoffMin <= 0 {
		cfg.BackoffMin = DefaultBackoffMin
	}
	if cfg.BackoffMax <= 0 {
		cfg.BackoffMax = DefaultBackoffMax
	}
	if cfg.StableAfter <= 0 {
		cfg.StableAfter = DefaultStableAfter
	}
	if cfg.StopSignal == 0 {
		cfg.StopSignal = syscall.SIGTERM
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.Observer == nil {
		cfg.Observer = nopObserver{}
	}
	p := &Pool{cfg: cfg, log: cfg.Logger, all: map[*worker]struct{}{}, size: cfg.Size}
	for i := 0; i < cfg.Size; i++ {
		p.slots = append(p.slots, &slot{})
	}
	return p
}

// Size is the number of slots.
func (p *Pool) Size() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.size
}

// StartError is returned by Start and Roll when a new worker failed: it
// exited, or was not ready in time.
type StartError struct {
	Slot   int
	Pid    int
	Reason string // "exited" or "not ready within 5s" or "cannot start: …"
	Exit   Exit   // how the worker ended (it is always ended)
}

func (e *StartError) Error() string {
	msg := fmt.Sprintf("worker %d (pid %d) %s", e.Slot, e.Pid, e.Reason)
	if e.Exit.Status != "" && e.Reason == "exited" {
		msg = fmt.Sprintf("worker %d (pid %d) exited at start: %s", e.Slot, e.Pid, e.Exit.Status)
	}
	return msg
}

// ErrClosing is returned when the pool is shutting down.
var ErrClosing = errors.New("pool is shutting down")

var errSlotTaken = errors.New("slot taken")

// Start fills every slot with a worker running spec and waits until all are
// ready. If one fails, every worker started is retired and a *StartError
// is returned. If ctx ends first, the workers are left running and ctx's cause
// is returned: call Shutdown to drain them.
func (p *Pool) Start(ctx context.Context, spec *Spec) error {
	var started []*worker
	for i := range p.Size() {
		w, err := p.launch(i, spec, true)
		if err != nil {
			p.stopAndWait(started, "start aborted")
			return err
		}
		started = append(started, w)
	}
	deadline := time.NewTimer(p.cfg.ReadyTimeout)
	defer deadline.Stop()
	for _, w := range started {
		reason := p.waitReady(ctx, w, deadline.C)
		if reason == "" {
			continue
		}
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		p.stopAndWait(started, "start aborted")
		return &StartError{Slot: w.slot, Pid: w.proc.Pid(), Reason: reason, Exit: w.proc.Exit()}
	}
	p.mu.Lock()
	for _, w := range started {
		// A worker that exited after it was ready has left its slot empty,
		// and the pool, not serving yet, would never refill it.
		if p.slots[w.slot].cur != w {
			p.mu.Unlock()
			p.stopAndWait(started, "start aborted")
			return &StartError{Slot: w.slot, Pid: w.proc.Pid(), Reason: "exited", Exit: w.proc.Exit()}
		}
	}
	p.serving = true
	p.mu.Unlock()
	return nil
}

// Adopt marks every slot as held by a worker of another primary: the pool
// starts no worker of its own and fills the slots by a Roll whose retire
// hook asks that primary to retire its worker. Call it instead of Start.
func (p *Pool) Adopt() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range p.slots[:p.size] {
		s.remote = true
	}
	p.serving = true
}

// RetireHook is called by Roll once a new worker is ready in a slot that
// was held by another primary; it returns once that primary has retired
// its worker.
type RetireHook func(ctx context.Context, slot int) error

// Roll replaces the worker of every slot, in order, by one running spec:
// start the new one, wait until it is ready, retire the old one. On the
// first failure it stops and returns a *StartError; the slots already
// rolled keep their new workers, the others their old ones, so Size ready
// workers keep serving. A slot held by another primary (see Adopt) is
// retired there through remote. progress, if not nil, is told each step as
// it begins.
func (p *Pool) Roll(ctx context.Context, spec *Spec, remote RetireHook, progress func(step, steps int)) error {
	slots := make([]int, p.Size())
	for i := range slots {
		slots[i] = i
	}
	return p.roll(ctx, slots, func(int) *Spec { return spec }, remote, progress)
}

// RollBack refills, one at a time, the slots given away by HandOver with
// each slot's last spec, asking the other primary through remote to retire
// its worker as each new one is ready: a hand-over that failed half-way is
// undone without ever having fewer than Size ready workers.
func (p *Pool) RollBack(ctx context.Context, remote RetireHook) error {
	var slots []int
	p.mu.Lock()
	for i, s := range p.slots {
		if s.remote && s.spec != nil {
			slots = append(slots, i)
		}
	}
	p.mu.Unlock()
	return p.roll(ctx, slots, func(i int) *Spec {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.slots[i].spec
	}, remote, nil)
}

func (p *Pool) roll(ctx context.Context, slots []int, specFor func(int) *Spec, remote RetireHook, progress func(step, steps int)) error {
	for step, i := range slots {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		if progress != nil {
			progress(step+1, len(slots))
		}
		spec := specFor(i)
		w, err := p.launchReady(ctx, i, spec)
		if err != nil {
			return err
		}
		s := p.slots[i]
		old, wasRemote := s.cur, s.remote
		s.spec, s.remote = spec, false
		s.installLocked(w)
		p.mu.Unlock()
		if old != nil {
			p.retire(old, "replaced")
		}
		if wasRemote && remote != nil {
			if err := remote(ctx, i); err != nil {
				// Going on could leave both primaries serving this slot.
				return fmt.Errorf("the other primary did not retire its worker of slot %d: %w", i, err)
			}
		}
	}
	return nil
}

// HandOver retires the worker of slot i because a worker of another
// primary has taken its place; the slot is not refilled until Reclaim.
func (p *Pool) HandOver(i int) error {
	p.mu.Lock()
	if i < 0 || i >= len(p.slots) {
		p.mu.Unlock()
		return fmt.Errorf("no slot %d", i)
	}
	s := p.slots[i]
	old := s.cur
	s.cur, s.remote = nil, true
	if s.restart != nil {
		s.restart.Stop()
		s.restart = nil
	}
	p.mu.Unlock()
	if old != nil {
		p.retire(old, "handed over")
	}
	return nil
}

// Reclaim refills, at once, every slot given away by HandOver: the other
// primary is gone, and its workers with it.
func (p *Pool) Reclaim() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, s := range p.slots {
		if s.remote {
			s.remote = false
			p.scheduleLocked(i, 0)
		}
	}
}

// Remote reports how many slots are held by another primary.
func (p *Pool) Remote() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, s := range p.slots {
		if s.remote {
			n++
		}
	}
	return n
}

// ErrStale is returned by Replace when the worker to replace no longer
// holds its slot: it exited, or a deploy or hand-over replaced it.
var ErrStale = errors.New("the worker no longer holds its slot")

// Replace replaces the worker pid of slot i by a new one running the slot's
// spec, the way a roll replaces it: the new worker starts, and only once it
// is ready does it take the slot and the old one retire, so the slot never
// goes without a ready worker. reason is logged with the old worker's
// retirement. The old worker gets the stop signal and drain (DrainTimeout
// if drain <= 0) before SIGKILL: a worker suspected hung gets a short
// drain, so that one that still serves loses nothing and one that is truly
// stuck does not hold its connections for the whole DrainTimeout.
//
// If the new worker fails to start, it is stopped and a *StartError is
// returned, and the old worker keeps the slot. If the old worker lost the
// slot meanwhile, the new one is retired and ErrStale returned. Replace
// must not run at the same time as Start, Roll or another Replace.
func (p *Pool) Replace(ctx context.Context, i, pid int, reason string, drain time.Duration) error {
	p.mu.Lock()
	if i < 0 || i >= len(p.slots) {
		p.mu.Unlock()
		return fmt.Errorf("no slot %d", i)
	}
	s := p.slots[i]
	old := s.cur
	if p.closing {
		p.mu.Unlock()
		return ErrClosing
	}
	// A slot removed by a scale-down since the worker was picked is
	// stale too.
	if i >= p.size || s.remote || old == nil || old.proc.Pid() != pid || old.retiring {
		p.mu.Unlock()
		return ErrStale
	}
	spec := s.spec
	p.mu.Unlock()

	old.log.Info("worker replacing", zap.String("reason", reason))
	w, err := p.launchReady(ctx, i, spec)
	if err != nil {
		return err
	}
	// The old worker may have crashed meanwhile; its slot then waits for
	// a restart, which the new worker makes needless.
	if s.remote || (s.cur != old && s.cur != nil) || p.closing || i >= p.size {
		p.mu.Unlock()
		p.retire(w, "not needed: the slot changed")
		return ErrStale
	}
	s.installLocked(w)
	p.mu.Unlock()
	if drain <= 0 || drain > p.cfg.DrainTimeout {
		drain = p.cfg.DrainTimeout
	}
	p.retireWithin(old, reason, drain)
	return nil
}

// Ready reports how many slots are served by a ready worker that is not
// draining, their own or one of another primary's (a slot handed over),
// out of how many slots there are.
func (p *Pool) Ready() (ready, size int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range p.slots[:p.size] {
		if s.remote || (s.cur != nil && s.cur.ready && !s.cur.retiring) {
			ready++
		}
	}
	return ready, p.size
}

// Shutdown retires every worker with the stop signal and returns once all
// have exited (each is killed after DrainTimeout). No worker is started
// after Shutdown has begun.
func (p *Pool) Shutdown() {
	p.mu.Lock()
	p.closing = true
	var live []*worker
	for _, s := range p.slots {
		if s.restart != nil {
			s.restart.Stop()
			s.restart = nil
		}
	}
	for w := range p.all {
		live = append(live, w)
	}
	p.mu.Unlock()
	for _, w := range live {
		p.retire(w, "shutdown")
	}
	p.monitors.Wait()
}

// Workers returns a snapshot of the live workers, ordered by slot, then
// start time.
func (p *Pool) Workers() []WorkerInfo {
	p.mu.Lock()
	var out []WorkerInfo
	for w := range p.all {
		s := p.slots[w.slot]
		info := WorkerInfo{Slot: w.slot, Pid: w.proc.Pid(), Generation: w.gen, Ready: w.ready, ReadyAt: w.readyAt,
			Draining: w.retiring, Started: w.started, Current: s.cur == w, Restarts: s.restarts}
		if wd, ok := w.proc.(WatchdogReporter); ok {
			info.Watchdog, info.WatchdogTrigger = wd.Watchdog()
		}
		out = append(out, info)
	}
	p.mu.Unlock()
	slices.SortFunc(out, func(a, b WorkerInfo) int {
		if c := cmp.Compare(a.Slot, b.Slot); c != 0 {
			return c
		}
		return a.Started.Compare(b.Started)
	})
	return out
}

// WorkerInfo describes one live worker.
type WorkerInfo struct {
	Slot, Pid, Generation int
	Ready, Draining       bool
	// Current is false for a worker that is not (yet) the one holding its
	// slot: a new worker of a roll before it is ready.
	Current bool
	Started time.Time
	// Restarts counts the crash restarts of the worker's slot.
	Restarts int
	// ReadyAt is when the worker became ready (zero before).
	ReadyAt time.Time
	// Watchdog is when the worker last sent WATCHDOG=1 (zero if never);
	// WatchdogTrigger is set once it sent WATCHDOG=trigger.
	Watchdog        time.Time
	WatchdogTrigger bool
}

// WatchdogReporter is implemented by a Process that reports the sd_notify
// watchdog keep-alives its worker sends.
type WatchdogReporter interface {
	// Watchdog returns when WATCHDOG=1 last arrived (zero if never) and
	// whether WATCHDOG=trigger did.
	Watchdog() (last time.Time, trigger bool)
}

// State is "starting", "ready" or "draining".
func (w WorkerInfo) State() string {
	switch {
	case w.Draining:
		return "draining"
	case w.Ready:
		return "ready"
	}
	return "starting"
}

// launch starts a worker for slot i. A worker started by Start becomes the
// slot's current worker at once; one started by Roll only when ready.
func (p *Pool) launch(i int, spec *Spec, current bool) (*worker, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closing {
		return nil, ErrClosing
	}
	if current && (p.slots[i].cur != nil || p.slots[i].remote) {
		// A roll or a hand-over took the slot since the restart was
		// decided.
		return nil, errSlotTaken
	}
	proc, err := p.cfg.Launcher.Launch(i, spec)
	if err != nil {
		return nil, &StartError{Slot: i, Reason: "cannot start: " + err.Error()}
	}
	w := &worker{proc: proc, slot: i, gen: spec.Generation, started: time.Now(), reaped: make(chan struct{}),
		log: p.log.With(zap.Int("slot", i), zap.Int("pid", proc.Pid()), zap.Int("generation", spec.Generation))}
	p.all[w] = struct{}{}
	if current {
		p.slots[i].cur, p.slots[i].spec = w, spec
	}
	w.log.Info("worker spawned")
	p.cfg.Observer.WorkerStarted(i)
	p.monitors.Add(1)
	go p.monitor(w)
	return w, nil
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
	if unexpected {
		s.cur = nil
	}
	fields := []zap.Field{zap.String("status", exit.Status), zap.Duration("uptime", exit.Uptime)}
	if unexpected && exit.StderrTail != "" {
		fields = append(fields, zap.String("stderr", exit.StderrTail))
	}
	if unexpected && p.serving && !p.closing {
		w.log.Warn("worker exited", fields...)
		if exit.Uptime >= p.cfg.StableAfter {
			s.failures = 0
		}
		s.failures++
		p.scheduleLocked(w.slot, Backoff(s.failures, p.cfg.BackoffMin, p.cfg.BackoffMax))
	} else {
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

// Backoff is the delay before restarting a slot whose worker has failed
// failures times in a row: none for the first, then min doubling up to max.
func Backoff(failures int, min, max time.Duration) time.Duration {
	if failures <= 1 {
		return 0
	}
	d := min
	for i := 2; i < failures && d < max; i++ {
		d *= 2
	}
	if d > max {
		d = max
	}
	return d
}

func (p *Pool) scheduleLocked(i int, delay time.Duration) {
	s := p.slots[i]
	if s.restart != nil {
		s.restart.Stop()
	}
	p.log.Info("worker restart scheduled", zap.Int("slot", i), zap.Duration("backoff", delay), zap.Int("failures", s.failures))
	s.restart = time.AfterFunc(delay, func() { p.restart(i) })
}

func (p *Pool) restart(i int) {
	p.mu.Lock()
	s := p.slots[i]
	s.restart = nil
	if p.closing || i >= p.size || s.cur != nil || s.remote || s.spec == nil {
		p.mu.Unlock()
		return
	}
	spec := s.spec
	s.restarts++
	p.cfg.Observer.WorkerRestarted(i)
	p.mu.Unlock()
	if _, err := p.launch(i, spec, true); err != nil && !errors.Is(err, ErrClosing) && !errors.Is(err, errSlotTaken) {
		p.mu.Lock()
		s.failures++
		p.log.Error("worker restart failed", zap.Int("slot", i), zap.Error(err))
		if !p.closing {
			p.scheduleLocked(i, Backoff(s.failures, p.cfg.BackoffMin, p.cfg.BackoffMax))
		}
		p.mu.Unlock()
	}
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
		return fmt.Sprintf("not ready within %s", p.cfg.ReadyTimeout)
	case <-ctx.Done():
		return "cancelled: " + context.Cause(ctx).Error()
	}
}

// launchReady starts a worker for slot i that does not hold the slot yet
// and waits until it is ready (see awaitReady). It returns with p.mu held,
// so that the caller installs the worker before anything else sees the
// slot. A worker that was ready and then exited before that is a failed
// start, not a dead worker left holding the slot.
func (p *Pool) launchReady(ctx context.Context, i int, spec *Spec) (*worker, error) {
	w, err := p.launch(i, spec, false)
	if err != nil {
		return nil, err
	}
	if err := p.awaitReady(ctx, w); err != nil {
		return nil, err
	}
	p.mu.Lock()
	if _, alive := p.all[w]; !alive {
		p.mu.Unlock()
		return nil, &StartError{Slot: i, Pid: w.proc.Pid(), Reason: "exited", Exit: w.proc.Exit()}
	}
	return w, nil
}

// installLocked makes w the slot's worker, with a clean failure count and
// no restart pending (w makes it needless). Call with p.mu held.
func (s *slot) installLocked(w *worker) {
	s.cur, s.failures = w, 0
	if s.restart != nil {
		s.restart.Stop()
		s.restart = nil
	}
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
	p.stopAndWait([]*worker{w}, "not started: "+reason)
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
	p.mu.Unlock()
	select {
	case <-w.proc.Done():
		return // it has exited already: nothing to retire
	default:
	}
	fields := []zap.Field{zap.String("reason", reason)}
	if drain != p.cfg.DrainTimeout {
		fields = append(fields, zap.Duration("drain_timeout", drain))
	}
	w.log.Info("worker retiring", fields...)
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

// stopAndWait retires workers that failed to start and waits until they
// have exited. They get the stop signal and the drain timeout like any
// retired worker, not SIGKILL at once: one that was not ready may still
// have accepted connections on the shared socket, and its clients must
// get their answers.
func (p *Pool) stopAndWait(ws []*worker, reason string) {
	p.mu.Lock()
	for _, w := range ws {
		if p.slots[w.slot].cur == w {
			p.slots[w.slot].cur = nil
		}
	}
	p.mu.Unlock()
	for _, w := range ws {
		p.retire(w, reason)
	}
	for _, w := range ws {
		<-w.reaped
	}
}
