// Package steer is the socket layer of handoff: one SO_REUSEPORT group per
// TCP listen address, with the primary choosing which member socket each
// new connection goes to.
//
// # Model
//
// A Group stands for one TCP address. Its owner (the primary) creates the
// member sockets with Add, one per worker slot, holds them, and closes them
// with Close; a worker is given a member's socket (as fd 3.. or through
// bind adoption) and accepts from it. Every member has its own accept queue
// and its own open file description: a worker's blocking mode, socket
// options or shutdown() touch no other member.
//
// The kernel picks a member for each new connection (at the SYN) by running
// the program attached to the group. SetServing names the members that take
// new connections (a weight of one; every other member has weight zero) and
// reprograms the group in one step: attaching a program to any member
// replaces the group's program atomically, so a SYN sees either the old
// program or the new one, never a mix. A member steered away receives no new
// connection once its handshakes in flight have completed (one round trip);
// Drain waits for that and for its accept queue to empty (Queue). Only then
// is it safe to stop its worker: nothing more will land in its queue, and
// closing it (after its worker has exited) resets no connection.
//
// Until the first SetServing no program is attached and the kernel spreads
// connections over every member by a hash of the 4-tuple. A member added
// after that is steered away until a SetServing names it.
//
// # Modes
//
//   - RoundRobin: an eBPF program (BPF_PROG_TYPE_SK_REUSEPORT) picks member
//     (counter mod n) among the n serving members, with an atomic counter in
//     an array map, and selects it from a REUSEPORT_SOCKARRAY map keyed by a
//     slot each member keeps for its life, so the group's internal order
//     does not matter. Exact round-robin: n connections opened at once go
//     one to each serving member. It also counts the connections given to
//     each member (Given), and is attached as
//     BPF_SK_REUSEPORT_SELECT_OR_MIGRATE where the kernel has it (5.14), so
//     the connections queued on a member that is closed, and its handshakes
//     in flight, move to a serving member instead of being reset. Loading it
//     needs CAP_BPF or CAP_SYS_ADMIN.
//   - Random: a classic BPF program returns SKF_AD_RANDOM mod n mapped to
//     the serving members' indices in the group. The indices are the
//     kernel's order of the members: the order of listen(), and when a
//     member is closed the last member takes its index (swap-with-last). The
//     group creates and closes every member, so it tracks that order exactly.
//     Needs no privilege.
//   - Shared: no group. One socket, which every member shares (each member
//     is a duplicate descriptor of it), as handoff did before groups:
//     SetServing and Drain steer nothing.
//
// Detect reports the best mode this process can use, with a one-line
// reason.
//
// # Guarantees
//
// No program ever selects a member that has been closed: RoundRobin selects
// by slot, and the kernel takes a closed socket out of the map; Random
// reprograms around every close, so that no program names an index at
// the moment its member changes (see Group.Close for the order of the
// steps). A program never selects a member that
// SetServing did not name, except through a probe rule (SetProbe): a
// connection from a chosen local source port goes to a chosen member,
// serving or not, so the primary can check a worker's readiness through
// its own socket before steering to it.
//
// # Hand-over
//
// A new primary takes a group over through tableflip: Export gives the
// member sockets in the kernel's order and a small state (mode, address,
// ids, serving set, probe rules); Import, in the new primary, rebuilds the
// group from them and attaches its own program, which replaces the old
// primary's in one step. The old program keeps pointing at the same open
// sockets until then; the old primary must not change the group after
// Export, and ends with Release, which closes its descriptors without
// taking any member out of the group.
package steer

import (
	"errors"
	"fmt"
	"os"
	"time"
)

// Mode is how a group steers new connections.
type Mode int

const (
	// Shared is one socket for every member: no steering.
	Shared Mode = iota
	// Random is classic BPF: a uniformly random serving member.
	Random
	// RoundRobin is eBPF: the serving members in turn.
	RoundRobin
)

func (m Mode) String() string {
	switch m {
	case Shared:
		return "shared"
	case Random:
		return "random"
	case RoundRobin:
		return "round-robin"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// ParseMode reads a mode as --balance spells it: round-robin, random or
// shared.
func ParseMode(s string) (Mode, error) {
	switch s {
	case "round-robin":
		return RoundRobin, nil
	case "random":
		return Random, nil
	case "shared":
		return Shared, nil
	}
	return 0, fmt.Errorf("unknown balance mode %q: use round-robin, random or shared", s)
}

// MaxMembers is the most members a group holds at once.
const MaxMembers = 256

// DefaultSettle is how long Drain waits after a member was steered away
// before it trusts an empty queue: a handshake the old program started
// lands in the member's queue one round trip of its client later, so the
// settle time bounds the round trips it covers. In RoundRobin mode a
// later one is not lost either: closing the member moves it on
// (SELECT_OR_MIGRATE).
const DefaultSettle = 500 * time.Millisecond

// Errors of the package.
var (
	ErrClosed      = errors.New("steer: group closed")
	ErrNotMember   = errors.New("steer: not a member of this group")
	ErrNoServing   = errors.New("steer: no serving member: name at least one")
	ErrUnsupported = errors.New("steer: not supported in this mode")
	ErrTooMany     = fmt.Errorf("steer: a group holds at most %d members", MaxMembers)
)

// Member is one socket of a group.
type Member struct {
	id   int
	f    *os.File
	slot int // key in RoundRobin's maps, kept for the member's life

	closed    bool
	steeredAt time.Time // when SetServing last steered it away
	spare     bool      // Random: a placeholder no program names (Group.Close)
}

// ID is the member's number, unique in its group for the group's life (and
// kept across a hand-over).
func (m *Member) ID() int { return m.id }

// File is the member's listening socket, in blocking mode as systemd passes
// sockets. The group owns it: pass it to a worker (exec.Cmd.ExtraFiles
// dups it), never close it; Group.Close does. Its duplicates share its
// open file description: net.FileListener on it in the owner would make
// it non-blocking for its worker too.
func (m *Member) File() *os.File { return m.f }

// Fd is File().Fd().
func (m *Member) Fd() int { return int(m.f.Fd()) }

func (m *Member) String() string { return fmt.Sprintf("member %d", m.id) }
