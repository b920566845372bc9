package workerpool

import (
	"errors"
	"time"

	"go.uber.org/zap"
)

type slot struct {
	cur      *worker
	spec     *Spec
	remote   bool // held by a worker of another primary (hand-over)
	failures int
	restarts int // crash restarts of this slot so far
	restart  *time.Timer
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

// installLocked makes w the slot's worker, with a clean failure count and
// no restart pending (w makes it needless). Call with p.mu held.
func (s *slot) installLocked(w *worker) {
	s.cur, s.failures = w, 0
	if s.restart != nil {
		s.restart.Stop()
		s.restart = nil
	}
}
