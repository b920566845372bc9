//go:build linux

package runtime

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/handoff-dev/handoff/internal/steer"
	"github.com/handoff-dev/handoff/workerpool"
)

// socketLayer is the pool's workerpool.Sockets: every TCP listener is a
// SO_REUSEPORT group (internal/steer) with a socket per worker, steered
// by the primary; the other listeners (unix) are one socket all workers
// share, as they were before groups. It exists only when some listener
// is steered (mode is not Shared).
type socketLayer struct {
	log  *zap.Logger
	mode steer.Mode
	// groups[i] is listener i's group, nil for a shared listener, whose
	// raw fd is shared[i].
	groups []*steer.Group
	shared []int
	// keys name the listeners among tableflip's files (listenerKey).
	keys []string

	mu sync.Mutex
	// first are the sockets made with the groups (their first members,
	// which fixed the port): the first worker's.
	first *memberSet
	// serving is what each group was last told to serve.
	serving [][]*steer.Member
	// frozen: the groups were exported to a new primary, which steers
	// them from now on: nothing here changes them any more.
	frozen bool
	// fromOld are sockets taken over from the previous primary whose
	// worker may still drain there: closed once that primary is gone
	// (oldGone), not before, so that no draining worker's accept fails.
	fromOld  []*memberSet
	oldAlive bool
	// pending are closed sockets still the only ones served: they close
	// at the next Serve that steers elsewhere.
	pending []*memberSet
}

// balanceInfo is how connections are spread, and why: for the log,
// status and metrics.
type balanceInfo struct {
	mode steer.Mode
	why  string
}

// memberSet is one worker's sockets: a member of each group, and the
// shared fd of every other listener.
type memberSet struct {
	l       *socketLayer
	members []*steer.Member // by listener; nil for a shared one
	fds     []int
	closed  bool
	fromOld bool // a worker of the previous primary accepts from it
}

func (s *memberSet) FDs() []int { return s.fds }

// Drain waits until each of the worker's members has been steered away
// and its queue is empty. Frozen (handed over), the new primary has
// steered it away already: it waits the settle time from now, then for
// empty queues.
func (s *memberSet) Drain(ctx context.Context) error {
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
func (s *memberSet) Queue() (queue int, given uint64) {
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

// isFrozen says whether the groups were handed to a new primary, which
// steers them from now on.
func (l *socketLayer) isFrozen() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.frozen
}

// New makes a member of each group for a new worker.
func (l *socketLayer) New(int) (workerpool.Socks, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if s := l.first; s != nil {
		l.first = nil
		return s, nil
	}
	if l.frozen {
		return nil, errors.New("the listeners were handed to a new primary")
	}
	return l.newSet()
}

func (l *socketLayer) newSet() (*memberSet, error) {
	s := &memberSet{l: l, members: make([]*steer.Member, len(l.groups)), fds: make([]int, len(l.groups))}
	for i, g := range l.groups {
		if g == nil {
			s.fds[i] = l.shared[i]
			continue
		}
		m, err := g.Add()
		if err != nil {
			s.closeLocked()
			return nil, fmt.Errorf("a socket of its own on %s: %v", g.Addr(), err)
		}
		s.members[i], s.fds[i] = m, m.Fd()
	}
	return s, nil
}

// Serve steers each group's new connections to the members of serving.
func (l *socketLayer) Serve(serving []workerpool.Socks) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.frozen || len(serving) == 0 {
		return
	}
	for i, g := range l.groups {
		if g == nil {
			continue
		}
		var set []*steer.Member
		for _, s := range serving {
			if m := s.(*memberSet).members[i]; m != nil {
				set = append(set, m)
			}
		}
		if len(set) == 0 || slices.Equal(set, l.serving[i]) {
			continue
		}
		if err := g.SetServing(set...); err != nil {
			l.log.Error("cannot steer connections", zap.String("addr", g.Addr().String()), zap.Error(err))
			continue
		}
		l.serving[i] = set
	}
	l.closePendingLocked()
}

// Close closes a worker's members: no worker accepts from them any more.
// A member taken over from the previous primary waits for it to be gone.
func (l *socketLayer) Close(ws workerpool.Socks) {
	s := ws.(*memberSet)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.frozen {
		return
	}
	if s.fromOld && l.oldAlive {
		l.fromOld = append(l.fromOld, s)
		return
	}
	s.closeLocked()
}

// closeLocked closes s's members. One that is still the only one served
// (nothing else to steer to yet) stays until a Serve steers elsewhere:
// closing it would leave the group nothing to steer to.
func (s *memberSet) closeLocked() {
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

// closePendingLocked closes the members that waited for a Serve to steer
// elsewhere.
func (l *socketLayer) closePendingLocked() {
	pending := l.pending
	l.pending = nil
	for _, s := range pending {
		s.closeLocked()
	}
}

// oldGone closes the sockets that waited for the previous primary.
func (l *socketLayer) oldGone() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.oldAlive = false
	if l.frozen {
		return
	}
	for _, s := range l.fromOld {
		s.closeLocked()
	}
	l.fromOld = nil
}

// closeAll ends every group as the primary stops: for good, or
// (release) leaving them to another primary that serves on.
func (l *socketLayer) closeAll(release bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, g := range l.groups {
		if g == nil {
			continue
		}
		if l.frozen || release {
			g.Release()
		} else {
			g.CloseAll()
		}
	}
}
