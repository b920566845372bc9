package workerpool

import (
	"errors"
	"time"

	"go.uber.org/zap"
)

// slotState is where a slot is in its life. Every change of state is one
// of the slot methods below, called with the pool's lock held:
//
//	empty ──hold──▶ starting ──serve──▶ serving ◀──install── (any state)
//	  ▲                │                   │
//	  │   lost (before │                   │ lost: its worker exited unasked
//	  │   Start ends)  ▼                   ▼
//	  └────────────── empty           restarting ──hold (the restart)──▶ serving
//	                                       ▲
//	serving, restarting ──handOver──▶ remote ──reclaim──┘
//	(any state) ──adopt──▶ remote        (any state) ──clear (scaled down)──▶ empty
//
// A worker of a roll, a Replace or a growing Scale runs beside the slot
// until it is ready, then install makes it the slot's worker; a worker of
// Start or of a restart holds the slot from its launch. The fork runs
// without the pool's lock, so hold is in two steps: reserve, before the
// fork, puts the slot in the state hold gives (starting or serving) with
// no worker yet, which nothing else takes (it is not vacant); once forked,
// the worker holds it if it is still reserved for it (reservedFor: nothing
// installed, handed over, adopted or cleared it meanwhile), else it is
// retired as not needed. A fork that fails gives the slot back its state
// (unreserve).
type slotState int

const (
	// slotEmpty: no worker and none due: before Start, after a failed
	// start, or past the pool's size (removed by Scale).
	slotEmpty slotState = iota
	// slotStarting: held by a worker of Start, which has not finished;
	// if it exits, the slot is not refilled (Start fails instead).
	slotStarting
	// slotServing: held by its worker (cur), which is restarted if it
	// exits unasked.
	slotServing
	// slotRestarting: its worker exited unasked; a restart is scheduled
	// (restart) or being launched.
	slotRestarting
	// slotRemote: held by a worker of another primary (Adopt, HandOver).
	slotRemote
)

func (st slotState) String() string {
	return [...]string{"empty", "starting", "serving", "restarting", "remote"}[st]
}

type slot struct {
	state slotState
	// cur is the worker holding the slot: set in starting and serving
	// only.
	cur *worker
	// spec is what the slot's worker runs; a restart runs it again, a
	// roll-back restores it.
	spec     *Spec
	failures int // crash restarts in a row, for the backoff
	restarts int // crash restarts of this slot so far
	restart  *time.Timer
	// socks are the listening sockets the slot's worker accepts from
	// (with Config.Sockets): a restart gets them back.
	socks *sockRef
	// adopted are the sockets of the other primary's worker that held
	// the slot (Pool.AdoptSockets): steered to again if the slot is
	// handed back to it.
	adopted *sockRef
	// pending is the worker being launched for the slot after reserve;
	// it means something only while the slot is still reserved (cur nil,
	// in the reserved state).
	pending *worker
}

// vacant reports whether no worker holds the slot, neither one of this
// pool nor one of another primary: a worker launched to hold it may take
// it.
func (s *slot) vacant() bool {
	return s.state == slotEmpty || s.state == slotRestarting
}

// hold makes w, just launched with spec, the slot's worker, in state st:
// slotStarting for a worker of Start, slotServing for a restart. The
// failure count stays: it is what the next restart's backoff counts.
func (s *slot) hold(w *worker, spec *Spec, st slotState) {
	s.state, s.cur, s.spec, s.pending = st, w, spec, nil
}

// reserve keeps a vacant slot for w, about to be forked, in state st
// (what hold will give it), with no worker yet. It returns the state to
// give back if the fork fails.
func (s *slot) reserve(w *worker, st slotState) (prev slotState) {
	prev = s.state
	s.state, s.cur, s.pending = st, nil, w
	return prev
}

// reservedFor reports whether the slot is still kept for w, reserved in
// state st: nothing took it since.
func (s *slot) reservedFor(w *worker, st slotState) bool {
	return s.pending == w && s.cur == nil && s.state == st
}

// unreserve gives the slot, if still kept for w (reserved in state st),
// its state before the reservation back: w's fork failed.
func (s *slot) unreserve(w *worker, st, prev slotState) {
	if s.reservedFor(w, st) {
		s.state = prev
	}
	if s.pending == w {
		s.pending = nil
	}
}

// serve ends Start: its worker keeps the slot, and is restarted from now
// on if it exits.
func (s *slot) serve() {
	if s.state == slotStarting {
		s.state = slotServing
	}
}

// install makes w, ready, the slot's worker running spec, with a clean
// failure count and no restart pending (w makes it needless). It returns
// the worker it replaces (nil if none) and whether the slot was held by
// another primary.
func (s *slot) install(w *worker, spec *Spec) (old *worker, wasRemote bool) {
	old, wasRemote = s.cur, s.state == slotRemote
	s.state, s.cur, s.spec, s.failures = slotServing, w, spec, 0
	s.cancelRestart()
	return old, wasRemote
}

// lost records that w, the slot's worker, exited without being asked to.
// A serving slot is restarting from now on (the caller schedules the
// restart); one of an unfinished Start, or of a pool shutting down, is
// empty. It reports whether a restart is due.
func (s *slot) lost(w *worker, closing bool) (restart bool) {
	if s.cur != w {
		return false
	}
	restart = s.state == slotServing && !closing
	s.cur = nil
	s.state = slotEmpty
	if restart {
		s.state = slotRestarting
	}
	return restart
}

// drop empties the slot if w holds it: a worker of a failed start.
func (s *slot) drop(w *worker) {
	if s.cur == w {
		s.state, s.cur = slotEmpty, nil
	}
}

// adopt marks the slot as held by a worker of another primary.
func (s *slot) adopt() { s.state = slotRemote }

// handOver gives the slot to a worker of another primary and returns its
// own worker, for the caller to retire (nil if none).
func (s *slot) handOver() (old *worker) {
	old = s.cur
	s.state, s.cur = slotRemote, nil
	s.cancelRestart()
	return old
}

// reclaim takes back a slot of another primary that is gone: it is
// restarting (the caller launches the restart).
func (s *slot) reclaim() bool {
	if s.state != slotRemote {
		return false
	}
	s.state = slotRestarting
	return true
}

// clear empties a slot removed by Scale and forgets its history. It
// returns its worker, for the caller to retire (nil if none).
func (s *slot) clear() (old *worker) {
	s.cancelRestart()
	old = s.cur
	*s = slot{}
	return old
}

func (s *slot) cancelRestart() {
	if s.restart != nil {
		s.restart.Stop()
		s.restart = nil
	}
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

// scheduleLocked schedules the restart of slot i after delay. Call with
// p.mu held.
func (p *Pool) scheduleLocked(i int, delay time.Duration) {
	s := p.slots[i]
	if s.restart != nil {
		s.restart.Stop()
	}
	p.log.Info("worker restart scheduled", zap.Int("slot", i), zap.Duration("backoff", delay), zap.Int("failures", s.failures))
	s.restart = time.AfterFunc(delay, func() { p.restart(i) })
}

// scheduleBackoffLocked schedules the restart of slot i after the
// backoff its failures in a row call for. Call with p.mu held.
func (p *Pool) scheduleBackoffLocked(i int) {
	p.scheduleLocked(i, Backoff(p.slots[i].failures, p.cfg.BackoffMin, p.cfg.BackoffMax))
}

// restart launches a worker for a restarting slot i, unless something
// else has filled it meanwhile, and returns it (nil if none was launched).
func (p *Pool) restart(i int) *worker {
	p.mu.Lock()
	s := p.slots[i]
	s.restart = nil
	if p.closing || i >= p.size || s.state != slotRestarting || s.spec == nil {
		p.mu.Unlock()
		return nil
	}
	spec := s.spec
	s.restarts++
	p.cfg.Observer.WorkerRestarted(i)
	p.mu.Unlock()
	w, err := p.launch(i, spec, slotServing)
	if err != nil && !errors.Is(err, ErrClosing) && !errors.Is(err, errSlotTaken) {
		p.mu.Lock()
		s.failures++
		p.log.Error("worker restart failed", zap.Int("slot", i), zap.Error(err))
		if !p.closing {
			p.scheduleBackoffLocked(i)
		}
		p.mu.Unlock()
	}
	return w
}
