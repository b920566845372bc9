package workerpool

import (
	"context"
	"fmt"
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
	if !p.started {
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
			p.keepSocksLocked(s, nil)
			if w := s.clear(); w != nil {
				gone = append(gone, w)
			}
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
	return p.startBatch(ctx, slotRange(old, n), spec, batch{
		hold:    slotEmpty,
		aborted: "scale aborted",
		cancelled: func(ws []*worker) {
			// Shutting down: these drain alongside every other worker.
			for _, w := range ws {
				p.retire(w, "not started: scale cancelled")
			}
		},
		commit: func(ws []*worker) error {
			if p.closing {
				return ErrClosing
			}
			for _, w := range ws {
				s := p.slots[w.slot]
				s.restarts = 0
				p.installLocked(s, w, spec)
			}
			p.size = n
			p.steerLocked()
			return nil
		},
	})
}
