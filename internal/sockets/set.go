//go:build linux

package sockets

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/handoff-dev/handoff/internal/steer"
)

// Set is one worker's sockets (its workerpool.Socks): a member of each
// group, and the shared fd of every other listener.
type Set struct {
	l       *Layer
	members []*steer.Member // by listener; nil for a shared one
	fds     []int
	closed  bool
	fromOld bool // a worker of the previous primary accepts from it
}

// FDs are the sockets' raw fds, by listener: the worker's fds 3, 4, …
func (s *Set) FDs() []int { return s.fds }

// Drain waits until each of the worker's members has been steered away
// and its queue is empty. Frozen (handed over), the new primary has
// steered it away already: it waits the settle time from now, then for
// empty queues.
func (s *Set) Drain(ctx context.Context) error {
	l := s.l
	l.mu.Lock()
	frozen := l.frozen
	l.mu.Unlock()
	if frozen {
		// The new primary steers: it steered the worker away before it
		// asked for the retire, now. Handshakes begun before may still
		// land.
		since := time.Now()
		for i, m := range s.members {
			if m == nil {
				continue
			}
			if err := l.groups[i].DrainSteered(ctx, m, since); err != nil {
				return err
			}
		}
		return nil
	}
	for i, m := range s.members {
		if m == nil {
			continue
		}
		if slices.Contains(l.groups[i].Serving(), m) {
			return fmt.Errorf("its socket on %s is the group's last serving one", l.groups[i].Addr())
		}
		if err := l.groups[i].Drain(ctx, m); err != nil {
			return err
		}
	}
	return nil
}

// Queue is the number of connections waiting in the worker's accept
// queues, and Given those the round-robin program gave it (0 in other
// modes).
func (s *Set) Queue() (queue int, given uint64) {
	for i, m := range s.members {
		if m == nil {
			continue
		}
		g := s.l.groups[i]
		if n, err := g.Queue(m); err == nil {
			queue += n
		}
		if n, err := g.Given(m); err == nil {
			given += n
		}
	}
	return queue, given
}

// closeLocked closes s's members. One that is still the only one served
// (nothing else to steer to yet) stays until a Serve steers elsewhere:
// closing it would leave the group nothing to steer to.
func (s *Set) closeLocked() {
	if s.closed {
		return
	}
	s.closed = true
	for i, m := range s.members {
		if m == nil {
			continue
		}
		err := s.l.groups[i].Close(m)
		switch {
		case errors.Is(err, steer.ErrNoServing):
			s.closed = false
			continue
		case err != nil && !errors.Is(err, steer.ErrNotMember):
			s.l.log.Warn("cannot close a worker socket", zap.String("addr", s.l.groups[i].Addr().String()), zap.Error(err))
		}
		s.members[i] = nil
	}
	if !s.closed && !slices.Contains(s.l.pending, s) {
		s.l.pending = append(s.l.pending, s)
	}
}
