package workerpool

import (
	"context"
	"fmt"
	"time"
)

// MaxSize bounds the number of slots a pool may have.
const MaxSize = 1024

// Scale changes the number of slots to n (1..MaxSize). It must not run at
// the same time as Start, Roll or another Scale.
//
// Growing launches a worker running spec in each new slot, all at once,
// and returns once every one is ready; only then do the new slots count
// in Size and restart their workers after a crash. If one exits or is not
// ready within ReadyTimeout, every new worker is retired (stop signal,
// drain), the size stays as it was and a *StartError is returned. If ctx
// ends first, the new workers are retired and ctx's cause returned.
//
// Shrinking removes the highest slots: their workers get the stop signal
// and drain (SIGKILL after DrainTimeout) while the slots below them keep
// serving untouched; Scale returns without waiting for the drains.
//
// On a pool not started yet (before Start or Adopt) it only sets the
// number of slots.
func (p *Pool) Scale(ctx context.Context, n int, spec *Spec) error {
	if n < 1 || n > MaxSize {
		return fmt.Errorf("cannot scale to %d workers: the number must be from 1 to %d", n, MaxSize)
	}
	p.mu.Lock()
	if p.closing {
		p.mu.Unlock()
		return ErrClosing
	}
	if !p.serving {
		p.slots, p.size = nil, n
		for range n {
			p.slots = append(p.slots, &slot{})
		}
		p.mu.Unlock()
		return nil
	}
	old := p.size
	if n <= old {
		var gone []*worker
		for _, s := range p.slots[n:old] {
			if s.restart != nil {
				s.restart.Stop()
				s.restart = nil
			}
			if s.cur != nil {
				gone = append(gone, s.cur)
			}
			s.cur, s.spec, s.failures, s.restarts = nil, nil, 0, 0
		}
		p.size = n
		p.mu.Unlock()
		for _, w := range gone {
			p.retire(w, "scaled down")
		}
		return nil
	}
	for len(p.slots) < n {
		p.slots = append(p.slots, &slot{})
	}
	p.mu.Unlock()
	return p.grow(ctx, old, n, spec)
}

// grow fills slots old..n-1 (not yet counted in size) and counts them once
// all their workers are ready.
func (p *Pool) grow(ctx context.Context, old, n int, spec *Spec) error {
	var started []*worker
	// fail retires every new worker and returns the failure of w (nil: of
	// the launch, err).
	fail := func(w *worker, reason string, err error) error {
		if ctx.Err() != nil {
			// Shutting down: these drain alongside every other worker.
			for _, w := range started {
				p.retire(w, "not started: scale cancelled")
			}
			return context.Cause(ctx)
		}
		p.stopAndWait(started, "scale aborted")
		if w == nil {
			return err
		}
		return &StartError{Slot: w.slot, Pid: w.proc.Pid(), Reason: reason, Exit: w.proc.Exit()}
	}
	for i := old; i < n; i++ {
		w, err := p.launch(i, spec, false)
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
			// Ready, then gone before it could take its slot.
			p.mu.Unlock()
			return fail(w, "exited", nil)
		}
	}
	if p.closing {
		p.mu.Unlock()
		return ErrClosing
	}
	for _, w := range started {
		s := p.slots[w.slot]
		s.cur, s.spec, s.failures, s.restarts = w, spec, 0, 0
	}
	p.size = n
	p.mu.Unlock()
	return nil
}
