//go:build linux

package sockets

import (
	"errors"
	"fmt"
	"slices"
	"sync"

	"go.uber.org/zap"

	"github.com/handoff-dev/handoff/internal/steer"
	"github.com/handoff-dev/handoff/workerpool"
)

// Layer is the pool's workerpool.Sockets: every TCP listener is a
// SO_REUSEPORT group (internal/steer) with a socket per worker, steered
// by the primary; the other listeners (unix) are one socket all workers
// share, as they were before groups. A primary has one only when some
// listener is steered (the mode is not Shared).
//
// It is built once, listener by listener (NewLayer, then AddGroup,
// AddImported or AddShared for each), before the pool uses it.
type Layer struct {
	log *zap.Logger
	// groups[i] is listener i's group, nil for a shared listener, whose
	// raw fd is shared[i].
	groups []*steer.Group
	shared []int
	// keys name the listeners among tableflip's files.
	keys []string

	mu sync.Mutex
	// first are the sockets made with the groups (their first members,
	// which fixed the port): the first worker's.
	first *Set
	// serving is what each group was last told to serve.
	serving [][]*steer.Member
	// frozen: the groups were exported to a new primary, which steers
	// them from now on: nothing here changes them any more.
	frozen bool
	// fromOld are sockets taken over from the previous primary whose
	// worker may still drain there: closed once that primary is gone
	// (OldGone), not before, so that no draining worker's accept fails.
	fromOld  []*Set
	oldAlive bool
	// pending are closed sockets still the only ones served: they close
	// at the next Serve that steers elsewhere.
	pending []*Set
	// imported are a new primary's: by slot, the sockets the previous
	// primary's workers accept from (AddImported).
	imported map[int]*Set
}

// NewLayer makes the layer of len(keys) listeners, none bound yet; keys
// name them among tableflip's files (Export, ImportGroup).
func NewLayer(log *zap.Logger, keys []string) *Layer {
	n := len(keys)
	l := &Layer{log: log, groups: make([]*steer.Group, n), shared: make([]int, n),
		keys: slices.Clone(keys), serving: make([][]*steer.Member, n)}
	l.first = &Set{l: l, members: make([]*steer.Member, n), fds: make([]int, n)}
	return l
}

// AddGroup makes listener i the group g, made by this primary with one
// member, first: the first worker's.
func (l *Layer) AddGroup(i int, g *steer.Group, first *steer.Member) {
	l.groups[i] = g
	l.first.members[i], l.first.fds[i] = first, first.Fd()
}

// AddImported makes listener i the group g, taken over from the previous
// primary (ImportGroup), and records, for each of its slots, the member
// of g its worker accepts from (slots[slot] is the member's id); it
// returns a fd of the group for the listener to be known by. A layer with
// an imported group has no first sockets: every worker of this primary
// gets new ones, and those of the previous primary's workers close once
// it is gone (OldGone).
func (l *Layer) AddImported(i int, g *steer.Group, slots []int) int {
	l.groups[i] = g
	l.first, l.oldAlive = nil, true
	if l.imported == nil {
		l.imported = map[int]*Set{}
	}
	members := g.Members()
	for slot, id := range slots {
		for _, m := range members {
			if m.ID() != id {
				continue
			}
			s := l.imported[slot]
			if s == nil {
				n := len(l.groups)
				s = &Set{l: l, members: make([]*steer.Member, n), fds: make([]int, n), fromOld: true}
				l.imported[slot] = s
			}
			s.members[i], s.fds[i] = m, m.Fd()
		}
	}
	return members[0].Fd()
}

// AddShared makes listener i the raw fd, one socket every worker shares.
func (l *Layer) AddShared(i int, fd int) {
	l.shared[i] = fd
	if l.first != nil {
		l.first.fds[i] = fd
	}
	for _, s := range l.imported {
		s.fds[i] = fd
	}
}

// Imported are, by slot, the sockets the previous primary's workers
// accept from (AddImported); nil for a layer of this primary's own.
func (l *Layer) Imported() map[int]*Set {
	if l == nil {
		return nil
	}
	return l.imported
}

// Mode is how the groups spread connections: Shared without a group.
func (l *Layer) Mode() steer.Mode {
	mode := steer.Shared
	for _, g := range l.groups {
		if g != nil {
			mode = g.Mode()
		}
	}
	return mode
}

// Shared says whether listener i is one socket every worker accepts from
// (not a steered group); every listener is, without a layer.
func (l *Layer) Shared(i int) bool {
	return l == nil || l.groups[i] == nil
}

// Frozen says whether the groups were handed to a new primary, which
// steers them from now on.
func (l *Layer) Frozen() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.frozen
}

// New makes a member of each group for a new worker.
func (l *Layer) New(int) (workerpool.Socks, error) {
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

func (l *Layer) newSet() (*Set, error) {
	s := &Set{l: l, members: make([]*steer.Member, len(l.groups)), fds: make([]int, len(l.groups))}
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
func (l *Layer) Serve(serving []workerpool.Socks) {
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
			if m := s.(*Set).members[i]; m != nil {
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
func (l *Layer) Close(ws workerpool.Socks) {
	s := ws.(*Set)
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

// closePendingLocked closes the members that waited for a Serve to steer
// elsewhere.
func (l *Layer) closePendingLocked() {
	pending := l.pending
	l.pending = nil
	for _, s := range pending {
		s.closeLocked()
	}
}

// OldGone closes the sockets that waited for the previous primary.
func (l *Layer) OldGone() {
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

// CloseAll ends every group as the primary stops: for good, or
// (release) leaving them to another primary that serves on.
func (l *Layer) CloseAll(release bool) {
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

// Target is where a worker's probes go: a member of a group.
type Target struct {
	Group  *steer.Group
	Member *steer.Member
}

// ProbeTarget finds, among fds (a worker's listening sockets, by
// listener), the first that is a member of a group.
func (l *Layer) ProbeTarget(fds []int) (Target, error) {
	if l == nil {
		return Target{}, errNoOwnSocket
	}
	for i, g := range l.groups {
		if g == nil || i >= len(fds) {
			continue
		}
		for _, m := range g.Members() {
			if m.Fd() == fds[i] {
				return Target{g, m}, nil
			}
		}
	}
	return Target{}, errNoOwnSocket
}

var errNoOwnSocket = errors.New("the worker has no socket of its own to probe through")
