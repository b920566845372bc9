package workerpool

import (
	"errors"
	"fmt"
)

// Sender is a Process with a message channel (OSLauncher with Channel set).
type Sender interface {
	// Send queues one JSON value for the worker; it never blocks.
	Send(data []byte) error
}

// ErrNoWorker is returned by Send when the slot has no worker of this
// pool's now (it is empty, restarting, or held by another primary).
var ErrNoWorker = errors.New("no worker in that slot")

// Send queues one JSON value for the current worker of slot i: the ready
// one that serves it, not a new one of a roll that is not ready yet.
func (p *Pool) Send(i int, data []byte) error {
	p.mu.Lock()
	if i < 0 || i >= p.size {
		n := p.size
		p.mu.Unlock()
		return fmt.Errorf("no slot %d (the pool has %d)", i, n)
	}
	w := p.slots[i].cur
	p.mu.Unlock()
	if w == nil {
		return ErrNoWorker
	}
	s, ok := w.proc.(Sender)
	if !ok {
		return ErrNoChannel
	}
	return s.Send(data)
}

// Broadcast queues one JSON value for every live worker of this pool that
// is not draining, including new ones not ready yet. It returns how many
// it reached and the errors of those it did not.
func (p *Pool) Broadcast(data []byte) (int, error) {
	p.mu.Lock()
	var to []Sender
	for w := range p.all {
		if s, ok := w.proc.(Sender); ok && !w.retiring {
			to = append(to, s)
		}
	}
	p.mu.Unlock()
	n := 0
	var errs []error
	for _, s := range to {
		if err := s.Send(data); err != nil {
			errs = append(errs, err)
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}
