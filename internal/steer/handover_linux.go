//go:build linux

package steer

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// state is what a new primary needs, beside the sockets, to take a group
// over.
type state struct {
	Mode    Mode           `json:"mode"`
	Members []int          `json:"members"`           // ids, in the kernel's order (-1: a spare)
	Slots   []int          `json:"slots,omitempty"`   // RoundRobin: each member's key in the maps
	Serving []int          `json:"serving,omitempty"` // ids; absent before the first SetServing
	Probes  map[uint16]int `json:"probes,omitempty"`  // source port → id
	NextID  int            `json:"next_id"`
	Settle  time.Duration  `json:"settle,omitempty"`
}

// Export gives what a new primary needs to take the group over (Import):
// the member sockets in the kernel's order (in Shared mode the shared
// socket first; in RoundRobin mode followed by its three maps, since a
// socket can be in one socket map only), to pass as they are to
// tableflip's Fds (which duplicates them; the group keeps owning them),
// and the group's state. The group must not change until the hand-over
// ends: then Release if it succeeded, or carry on if it failed.
func (g *Group) Export() ([]*os.File, []byte, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil, nil, ErrClosed
	}
	st := state{Mode: g.mode, NextID: g.nextID, Settle: g.Settle, Probes: g.probes}
	var files []*os.File
	if g.shared != nil {
		files = append(files, g.shared)
	}
	for _, m := range g.order {
		st.Members = append(st.Members, m.id)
		files = append(files, m.f)
		if g.ebpf != nil {
			st.Slots = append(st.Slots, m.slot)
		}
	}
	if g.ebpf != nil {
		if g.mapFiles == nil {
			fs, err := g.ebpf.files()
			if err != nil {
				return nil, nil, err
			}
			g.mapFiles = fs
		}
		files = append(files, g.mapFiles...)
	}
	if g.serving != nil {
		st.Serving = []int{}
		for _, m := range g.serving {
			st.Serving = append(st.Serving, m.id)
		}
	}
	b, err := json.Marshal(st)
	return files, b, err
}

// Import takes over a group from what Export gave: files (their
// descriptors are duplicated: the caller still closes its own) and the
// state. It attaches its own program, built for the same serving members
// and probe rules, which replaces the old primary's in one step; the old
// one stays attached, and selects only open sockets, until then.
// RoundRobin takes over the old primary's maps: its turn and counts go on.
func Import(files []*os.File, stateJSON []byte) (*Group, error) {
	var st state
	if err := json.Unmarshal(stateJSON, &st); err != nil {
		return nil, fmt.Errorf("steer: import: state: %w", err)
	}
	socks, mapFiles, err := st.importFiles(files)
	if err != nil {
		return nil, err
	}
	fds, sa, err := dupListeners(socks)
	if err != nil {
		return nil, fmt.Errorf("steer: import: %w", err)
	}
	g, err := importGroup(&st, socks, mapFiles, fds, sa)
	if err != nil {
		closeFDs(fds)
		return nil, fmt.Errorf("steer: import: %w", err)
	}
	if st.Serving != nil {
		if err := g.serveImported(st.Serving); err != nil {
			g.Release()
			return nil, err
		}
	}
	return g, nil
}

// importFiles splits files as Export gave them for st into the sockets (in
// Shared mode the shared socket first) and, in RoundRobin mode, the maps'
// files, checking that their numbers match st.
func (st *state) importFiles(files []*os.File) (socks, mapFiles []*os.File, err error) {
	want := len(st.Members)
	if st.Mode == Shared {
		want++
	}
	if st.Mode == RoundRobin {
		if len(st.Slots) != len(st.Members) || len(files) != want+rrFiles {
			return nil, nil, fmt.Errorf("steer: import: %d files for a round-robin group of %d members", len(files), len(st.Members))
		}
		files, mapFiles = files[:want], files[want:]
	}
	if len(files) != want || want == 0 {
		return nil, nil, fmt.Errorf("steer: import: %d sockets for a %s group of %d members", len(files), st.Mode, len(st.Members))
	}
	return files, mapFiles, nil
}

// dupListeners duplicates the descriptors of files, which must be
// listening sockets all bound to one address, and returns the duplicates
// and that address. On error it closes the duplicates made so far.
func dupListeners(files []*os.File) ([]int, unix.Sockaddr, error) {
	fds := make([]int, 0, len(files))
	fail := func(err error) ([]int, unix.Sockaddr, error) {
		closeFDs(fds)
		return nil, nil, err
	}
	var sa unix.Sockaddr
	for _, f := range files {
		fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return fail(os.NewSyscallError("fcntl", err))
		}
		fds = append(fds, fd)
		if v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || v != 1 {
			return fail(fmt.Errorf("%s is not a listening socket", f.Name()))
		}
		got, err := unix.Getsockname(fd)
		if err != nil {
			return fail(os.NewSyscallError("getsockname", err))
		}
		if sa != nil && tcpAddr(got).String() != tcpAddr(sa).String() {
			return fail(fmt.Errorf("%s is bound to %v, not %v", f.Name(), tcpAddr(got), tcpAddr(sa)))
		}
		sa = got
	}
	return fds, sa, nil
}

// closeFDs closes each of fds.
func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// importGroup makes the group of st from fds, the duplicated descriptors
// of socks (bound to sa), and in RoundRobin mode takes over the maps of
// mapFiles. The members own fds once it returns without an error.
func importGroup(st *state, socks, mapFiles []*os.File, fds []int, sa unix.Sockaddr) (*Group, error) {
	g := &Group{mode: st.Mode, sa: sa, fam: unix.AF_INET, nextID: st.NextID, Settle: st.Settle, probes: st.Probes}
	if _, ok := sa.(*unix.SockaddrInet6); ok {
		g.fam = unix.AF_INET6
	}
	if g.probes == nil {
		g.probes = map[uint16]int{}
	}
	if st.Mode == RoundRobin {
		rr, err := importRR(mapFiles)
		if err != nil {
			return nil, err
		}
		g.ebpf = rr
	}
	first := 0
	if st.Mode == Shared {
		g.shared = os.NewFile(uintptr(fds[0]), socks[0].Name())
		first = 1
	}
	for i, fd := range fds[first:] {
		m := &Member{id: st.Members[i], slot: -1, spare: st.Members[i] < 0, f: os.NewFile(uintptr(fd), socks[first+i].Name())}
		if g.ebpf != nil {
			m.slot = st.Slots[i]
		}
		g.order = append(g.order, m)
	}
	return g, nil
}

// serveImported attaches the group's own program for the serving members
// of ids, and the probe rules taken over.
func (g *Group) serveImported(ids []int) error {
	var set []*Member
	for _, id := range ids {
		m := g.byID(id)
		if m == nil {
			return fmt.Errorf("steer: import: serving member %d is not in the group", id)
		}
		set = append(set, m)
	}
	g.mu.Lock()
	err := g.program(set, g.probes)
	g.mu.Unlock()
	if err != nil {
		return fmt.Errorf("steer: import: %w", err)
	}
	return nil
}
