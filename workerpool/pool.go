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
	// Sockets, if not nil, gives each worker listening sockets of its own
	// and lets the pool steer new connections (see Sockets); nil: every
	// worker accepts from the Launcher's shared sockets.
	Sockets Sockets
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
	started  bool                 // after Start or Adopt; before, Scale only sets the size
	closing  bool
	prob     *probation     // the probation of a RollWith, while it runs
	monitors sync.WaitGroup // one per live worker and per drain timer
	shut     chan struct{}  // closed when Shutdown begins
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
	p := &Pool{cfg: cfg, log: cfg.Logger, all: map[*worker]struct{}{}, size: cfg.Size, shut: make(chan struct{})}
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
	return p.startBatch(ctx, slotRange(0, p.Size()), spec, batch{
		hold:    slotStarting,
		aborted: "start aborted",
		// Left running: Shutdown drains them with the others.
		cancelled: func([]*worker) {},
		commit: func(ws []*worker) error {
			for _, w := range ws {
				p.slots[w.slot].serve()
			}
			p.started = true
			return nil
		},
	})
}

// slotRange is the slots from to to-1, in order.
func slotRange(from, to int) []int {
	slots := make([]int, 0, max(0, to-from))
	for i := from; i < to; i++ {
		slots = append(slots, i)
	}
	return slots
}

// batch says how startBatch treats its workers.
type batch struct {
	// hold is the state each slot takes with its new worker at launch
	// (slotStarting: Start), or slotEmpty: the workers take their slots
	// in commit (a growing Scale).
	hold slotState
	// aborted is the reason every new worker is retired with when one
	// fails.
	aborted string
	// cancelled deals with the new workers when ctx ends first.
	cancelled func(ws []*worker)
	// commit runs with p.mu held once every new worker is ready and
	// alive; its error is startBatch's.
	commit func(ws []*worker) error
}

// startBatch launches a worker running spec in each of slots, all at once,
// and waits, under one ReadyTimeout, until every one is ready; then it
// runs b.commit. If one fails (the launch, or it exits, or it is not ready
// in time), every new worker is retired and waited for, and a
// *StartError (or the launch's error) is returned; if ctx ends first,
// b.cancelled gets them and ctx's cause is returned. Start and a growing
// Scale are this batch.
func (p *Pool) startBatch(ctx context.Context, slots []int, spec *Spec, b batch) error {
	var started []*worker
	// fail ends the batch on the failure of w (nil: of the launch, err).
	fail := func(w *worker, reason string, err error) error {
		if ctx.Err() != nil {
			b.cancelled(started)
			return context.Cause(ctx)
		}
		p.retireAndWait(started, b.aborted)
		if w == nil {
			return err
		}
		return w.startError(reason)
	}
	for _, i := range slots {
		w, err := p.launch(i, spec, b.hold)
		if err != nil {
			return fail(nil, "", err)
		}
		started = append(started, w)
	}
	deadline := time.NewTimer(p.cfg.ReadyTimeout)
	defer deadline.Stop()
	for _, w := range started {
		if reason := p.waitReady(ctx, w, deadline.C); reason != "" {
			return fail(w, reason, nil)
		}
	}
	p.mu.Lock()
	for _, w := range started {
		if _, alive := p.all[w]; !alive {
			// Ready, then gone before the batch ended: its slot would
			// stay empty, nothing refills it.
			p.mu.Unlock()
			return fail(w, "exited", nil)
		}
	}
	err := b.commit(started)
	p.steerLocked()
	p.mu.Unlock()
	return err
}

// ReadySlots reports how many slots are served by a ready worker that is not
// draining, their own or one of another primary's (a slot handed over),
// out of how many slots there are.
func (p *Pool) ReadySlots() (ready, size int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range p.slots[:p.size] {
		if s.state == slotRemote || (s.cur != nil && s.cur.ready && !s.cur.retiring) {
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
	if !p.closing {
		close(p.shut)
	}
	p.closing = true
	var live []*worker
	for _, s := range p.slots {
		s.cancelRestart()
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
		if w.socks != nil {
			info.Socks = w.socks.s
		}
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
	// Socks are the worker's own listening sockets (Config.Sockets); nil
	// when it accepts from the sockets every worker shares.
	Socks Socks
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
