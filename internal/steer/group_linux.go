//go:build linux

package steer

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Group is one TCP address's set of member sockets and the program that
// steers new connections among them. Its methods are safe for concurrent
// use.
type Group struct {
	mode Mode
	sa   unix.Sockaddr // the address every member binds (port filled after the first)
	fam  int

	// Settle is how long Drain waits after a member was steered away
	// before it trusts an empty queue (DefaultSettle when zero). Set it
	// before use.
	Settle time.Duration

	mu       sync.Mutex
	order    []*Member      // the kernel's order of the group (Shared: every member)
	serving  []*Member      // SetServing's set; nil until the first call
	probes   map[uint16]int // source port → member id
	nextID   int
	shared   *os.File   // Shared: the one socket
	ebpf     *rrState   // RoundRobin
	mapFiles []*os.File // RoundRobin: its maps, once exported
	closed   bool
}

// New creates an empty group for the TCP address addr ("host:port", host
// empty or "::" for every address of both families, port 0 for a port the
// kernel picks when the first member is added).
func New(addr string, mode Mode) (*Group, error) {
	sa, fam, err := resolve(addr)
	if err != nil {
		return nil, err
	}
	g := &Group{mode: mode, sa: sa, fam: fam, probes: map[uint16]int{}}
	switch mode {
	case Shared:
		fd, err := listenSocket(g.fam, g.sa, false)
		if err != nil {
			return nil, fmt.Errorf("steer: listen on %s: %w", addr, err)
		}
		g.shared = os.NewFile(uintptr(fd), "steer:"+addr)
		g.sa = boundAddr(fd, g.sa)
	case Random:
	case RoundRobin:
		rr, err := newRR()
		if err != nil {
			return nil, err
		}
		g.ebpf = rr
	default:
		return nil, fmt.Errorf("steer: unknown mode %d", mode)
	}
	return g, nil
}

// Mode is the group's mode.
func (g *Group) Mode() Mode { return g.mode }

// Addr is the address the members are bound to (with the port the kernel
// chose, once a member exists).
func (g *Group) Addr() net.Addr {
	g.mu.Lock()
	defer g.mu.Unlock()
	return tcpAddr(g.sa)
}

// resolve turns addr into the sockaddr every member binds: a host that is
// empty or "::" is dual-stack (IPv6 with IPV6_V6ONLY off, as Go's
// net.Listen(":PORT") does), falling back to IPv4 where IPv6 is absent.
func resolve(addr string) (unix.Sockaddr, int, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, 0, fmt.Errorf("steer: listen address %q: %w", addr, err)
	}
	ta, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		return nil, 0, fmt.Errorf("steer: listen address %q: %w", addr, err)
	}
	if host == "" || host == "::" {
		if fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0); err == nil {
			unix.Close(fd)
			return &unix.SockaddrInet6{Port: ta.Port}, unix.AF_INET6, nil
		}
		return &unix.SockaddrInet4{Port: ta.Port}, unix.AF_INET, nil
	}
	if ip4 := ta.IP.To4(); ip4 != nil {
		return &unix.SockaddrInet4{Port: ta.Port, Addr: [4]byte(ip4)}, unix.AF_INET, nil
	}
	sa := &unix.SockaddrInet6{Port: ta.Port, Addr: [16]byte(ta.IP.To16())}
	return sa, unix.AF_INET6, nil
}

func tcpAddr(sa unix.Sockaddr) *net.TCPAddr {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return &net.TCPAddr{IP: net.IP(sa.Addr[:]).To16(), Port: sa.Port}
	case *unix.SockaddrInet6:
		return &net.TCPAddr{IP: net.IP(sa.Addr[:]), Port: sa.Port}
	}
	return nil
}

// boundAddr is sa with the port the socket fd was given.
func boundAddr(fd int, sa unix.Sockaddr) unix.Sockaddr {
	got, err := unix.Getsockname(fd)
	if err != nil {
		return sa
	}
	switch b := got.(type) {
	case *unix.SockaddrInet4:
		c := *sa.(*unix.SockaddrInet4)
		c.Port = b.Port
		return &c
	case *unix.SockaddrInet6:
		c := *sa.(*unix.SockaddrInet6)
		c.Port = b.Port
		return &c
	}
	return sa
}

// listenSocket makes a blocking, close-on-exec TCP listener bound to sa.
func listenSocket(fam int, sa unix.Sockaddr, reusePort bool) (int, error) {
	fd, err := unix.Socket(fam, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	opt := func(level, name, v int, what string) {
		if err == nil {
			err = os.NewSyscallError("setsockopt "+what, unix.SetsockoptInt(fd, level, name, v))
		}
	}
	opt(unix.SOL_SOCKET, unix.SO_REUSEADDR, 1, "SO_REUSEADDR")
	if reusePort {
		opt(unix.SOL_SOCKET, unix.SO_REUSEPORT, 1, "SO_REUSEPORT")
	}
	if sa6, ok := sa.(*unix.SockaddrInet6); ok && sa6.Addr == [16]byte{} {
		opt(unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0, "IPV6_V6ONLY")
	}
	if err == nil {
		err = os.NewSyscallError("bind", unix.Bind(fd, sa))
	}
	if err == nil {
		err = os.NewSyscallError("listen", unix.Listen(fd, backlog()))
	}
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// backlog is the kernel's somaxconn, as Go's net.Listen uses.
func backlog() int {
	b, err := os.ReadFile("/proc/sys/net/core/somaxconn")
	if err == nil {
		var n int
		if _, err := fmt.Sscan(string(b), &n); err == nil && n > 0 {
			return n
		}
	}
	return unix.SOMAXCONN
}

// Add creates a new member, last in the group's order. Once SetServing has
// been called it takes no new connection until a SetServing names it.
func (g *Group) Add() (*Member, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil, ErrClosed
	}
	if len(g.order) >= MaxMembers {
		return nil, ErrTooMany
	}
	m := &Member{id: g.nextID, slot: -1}
	if g.mode == Shared {
		fd, err := unix.FcntlInt(g.shared.Fd(), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return nil, os.NewSyscallError("fcntl", err)
		}
		m.f = os.NewFile(uintptr(fd), g.shared.Name())
	} else {
		fd, err := listenSocket(g.fam, g.sa, true)
		if err != nil {
			return nil, fmt.Errorf("steer: add a member on %s: %w", tcpAddr(g.sa), err)
		}
		g.sa = boundAddr(fd, g.sa)
		m.f = os.NewFile(uintptr(fd), fmt.Sprintf("steer:%s#%d", tcpAddr(g.sa), m.id))
		if g.ebpf != nil {
			if err := g.ebpf.insert(m, g.usedSlots()); err != nil {
				m.f.Close()
				return nil, err
			}
		}
	}
	g.nextID++
	g.order = append(g.order, m)
	g.reapSpares() // the new member, named by no program, may take a spare's index
	return m, nil
}

func (g *Group) usedSlots() []int {
	s := make([]int, 0, len(g.order))
	for _, m := range g.order {
		s = append(s, m.slot)
	}
	return s
}

// Members are the group's members in the kernel's order (spares left
// out: see Close).
func (g *Group) Members() []*Member {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.DeleteFunc(slices.Clone(g.order), func(m *Member) bool { return m.spare })
}

// Serving are the members SetServing named (nil before the first call).
func (g *Group) Serving() []*Member {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.serving)
}

func (g *Group) index(m *Member) int {
	return slices.Index(g.order, m)
}

func (g *Group) byID(id int) *Member {
	for _, m := range g.order {
		if m.id == id {
			return m
		}
	}
	return nil
}

// SetServing steers every new connection to the members named (each at
// weight one; every other member at weight zero), in one step: from the
// moment it returns, no new connection goes to a member left out (but
// the handshakes already in flight: see Drain). In Shared mode it only
// records the set.
func (g *Group) SetServing(members ...*Member) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return ErrClosed
	}
	if len(members) == 0 {
		return ErrNoServing
	}
	set := make([]*Member, 0, len(members))
	for _, m := range members {
		if g.index(m) < 0 {
			return fmt.Errorf("%w: %v", ErrNotMember, m)
		}
		if !slices.Contains(set, m) {
			set = append(set, m)
		}
	}
	if err := g.program(set, g.probes); err != nil {
		return err
	}
	g.reapSpares()
	return nil
}

// program attaches the program for serving set and probe rules to the
// group, in the current order, and records them.
func (g *Group) program(set []*Member, probes map[uint16]int) error {
	if err := g.attach(set, probes); err != nil {
		return err
	}
	now := time.Now()
	for _, m := range g.serving {
		if !slices.Contains(set, m) {
			m.steeredAt = now
		}
	}
	g.serving = set
	g.probes = probes
	return nil
}

// attach builds and attaches the program for set and probes in the
// current order, without recording them.
func (g *Group) attach(set []*Member, probes map[uint16]int) error {
	if len(g.order) == 0 || g.mode == Shared {
		return nil
	}
	if g.mode == RoundRobin {
		return g.ebpf.attach(g.order[0].Fd(), slots(set), g.probeTargets(probes, func(m *Member) int { return m.slot }))
	}
	idx := make([]int, len(set))
	for i, m := range set {
		idx[i] = g.index(m)
	}
	prog := randomProgram(idx, g.probeTargets(probes, g.index))
	return attachCBPF(g.order[0].Fd(), prog)
}

func slots(set []*Member) []int {
	s := make([]int, len(set))
	for i, m := range set {
		s[i] = m.slot
	}
	return s
}

// probeTargets maps each probe rule to what the program returns for its
// member (index or slot), leaving out rules whose member is gone.
func (g *Group) probeTargets(probes map[uint16]int, target func(*Member) int) map[uint16]int {
	t := make(map[uint16]int, len(probes))
	for port, id := range probes {
		if m := g.byID(id); m != nil {
			t[port] = target(m)
		}
	}
	return t
}

// SetProbe sends every new connection whose source port is port to m,
// whether m serves or not (a readiness probe through m's own socket; the
// prober binds its socket to that local port before connecting), from the
// moment it returns. Before the first SetServing, every other connection
// goes where the kernel's hash sends it, as with no program.
func (g *Group) SetProbe(port uint16, m *Member) error {
	return g.changeProbe(port, m)
}

// ClearProbe removes the probe rule of source port port.
func (g *Group) ClearProbe(port uint16) error {
	return g.changeProbe(port, nil)
}

func (g *Group) changeProbe(port uint16, m *Member) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return ErrClosed
	}
	if g.mode == Shared {
		return ErrUnsupported
	}
	probes := maps.Clone(g.probes)
	if probes == nil {
		probes = map[uint16]int{}
	}
	if m == nil {
		delete(probes, port)
	} else {
		if g.index(m) < 0 {
			return fmt.Errorf("%w: %v", ErrNotMember, m)
		}
		probes[port] = m.id
	}
	if g.serving == nil {
		// Nothing serves yet (a primary's first workers): a program of
		// probe rules alone, which leaves every other connection to the
		// kernel's hash, as no program does.
		if err := g.attach(nil, probes); err != nil {
			return err
		}
		g.probes = probes
		return nil
	}
	return g.program(g.serving, probes)
}

// Queue is the number of connections in m's accept queue: established, not
// yet accepted (TCP_INFO's tcpi_unacked on a listener). In Shared mode it
// is the one socket's queue.
func (g *Group) Queue(m *Member) (int, error) {
	g.mu.Lock()
	if m.closed {
		g.mu.Unlock()
		return 0, fmt.Errorf("steer: queue of %v: %w", m, ErrClosed)
	}
	fd := m.Fd()
	g.mu.Unlock()
	info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return 0, os.NewSyscallError("getsockopt TCP_INFO", err)
	}
	return int(info.Unacked), nil
}

// Drain waits, polling, until m has been steered away (by a SetServing that
// leaves it out, made before or during the wait), the Settle time has
// passed since (the handshakes its old program started have landed in its
// queue), and its accept queue is empty: from then on nothing new reaches
// m, so its worker can be stopped without losing a connection. It gives up
// with ctx. In Shared mode it returns at once: nothing can be steered away
// from a shared socket.
func (g *Group) Drain(ctx context.Context, m *Member) error {
	if g.mode == Shared {
		return nil
	}
	return g.drain(ctx, m, func() (bool, time.Time) {
		g.mu.Lock()
		defer g.mu.Unlock()
		return slices.Contains(g.serving, m) || g.serving == nil, m.steeredAt
	})
}

// DrainSteered is Drain for a member that another process steered away
// at since (a previous primary's group, after the hand-over: this
// group's own steering no longer applies): it waits until the Settle time
// has passed since then and m's queue is empty.
func (g *Group) DrainSteered(ctx context.Context, m *Member, since time.Time) error {
	if g.mode == Shared {
		return nil
	}
	return g.drain(ctx, m, func() (bool, time.Time) { return false, since })
}

// drain waits until state says m is steered away, the Settle time has
// passed since, and m's queue is empty.
func (g *Group) drain(ctx context.Context, m *Member, state func() (serving bool, since time.Time)) error {
	settle := g.Settle
	if settle <= 0 {
		settle = DefaultSettle
	}
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	why := "it is still serving"
	for {
		g.mu.Lock()
		closed := m.closed
		g.mu.Unlock()
		serving, since := state()
		switch {
		case closed:
			return fmt.Errorf("steer: drain %v: %w", m, ErrClosed)
		case serving:
			why = "it is still serving"
		case time.Since(since) < settle:
			why = "handshakes in flight"
		default:
			q, err := g.Queue(m)
			if err != nil {
				return err
			}
			if q == 0 {
				return nil
			}
			why = fmt.Sprintf("%d connections queued", q)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("steer: drain %v: %w (%s)", m, context.Cause(ctx), why)
		case <-tick.C:
		}
	}
}

// Close takes m out of the group and closes it; call it once m's worker
// has exited (it fails the worker's next accept) and, to reset no
// connection, after Drain. A serving m is steered away first; closing the
// last serving member of a group that keeps others is refused.
//
// shutdown(SHUT_RD) takes the socket out of the group at once even if a
// worker still holds a copy, so the group's order stays exactly what the
// kernel has: the last member moves into m's index (swap-with-last).
//
// Random mode reprograms around the move, so that no program names the
// last member's index at the moment it changes: if the last member is
// serving (or probed) and another member serves, a program without it is
// attached first, then the socket closed, then the program for the new
// order; if it is the only serving member, a spare (a socket no program
// names, never listed by Members) is added first and moves instead, and
// is closed at the first later change that allows it (a new member
// added, typically). RoundRobin needs none of this: its map is keyed by
// slot, not order.
func (g *Group) Close(m *Member) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	i := g.index(m)
	if i < 0 {
		return fmt.Errorf("%w: %v", ErrNotMember, m)
	}
	serving := g.serving
	if slices.Contains(serving, m) {
		serving = slices.DeleteFunc(slices.Clone(serving), func(s *Member) bool { return s == m })
		if len(serving) == 0 && len(g.order)-g.spares() > 1 && g.mode != Shared {
			return fmt.Errorf("steer: close %v: %w (steer to another member first)", m, ErrNoServing)
		}
	}
	probes := maps.Clone(g.probes)
	maps.DeleteFunc(probes, func(_ uint16, id int) bool { return id == m.id })
	if len(serving) == 0 {
		serving = nil
	}
	if g.serving != nil && serving != nil {
		if err := g.program(serving, probes); err != nil {
			return err
		}
	}
	if g.mode == Random && g.serving != nil && i != len(g.order)-1 {
		g.clearLast(serving, probes)
	}
	err := g.remove(m)
	testHookClosed()
	g.serving = serving
	g.probes = probes
	if serving != nil && g.mode == Random { // RoundRobin's slots did not move
		if perr := g.attach(serving, probes); perr != nil && err == nil {
			err = perr
		}
		g.reapSpares()
	}
	return err
}

// testHookClosed runs in Close between the close and the program for the
// new order.
var testHookClosed = func() {}

// remove closes m and moves the last member into its index, as the
// kernel does.
func (g *Group) remove(m *Member) error {
	i, last := g.index(m), len(g.order)-1
	err := closeMember(m, g.mode != Shared)
	g.order[i] = g.order[last]
	g.order = g.order[:last]
	if g.ebpf != nil {
		g.ebpf.forget(m.slot)
	}
	return err
}

// named tells whether the program for serving and probes names m.
func named(m *Member, serving []*Member, probes map[uint16]int) bool {
	if slices.Contains(serving, m) {
		return true
	}
	for _, id := range probes {
		if id == m.id {
			return true
		}
	}
	return false
}

// clearLast makes the last member safe to move (Random): closing a member
// moves the last one into its index, and no program must name it at the
// moment it moves. If the program names it, it attaches a program without
// it when another member serves; else it adds a spare, a member no
// program names, which becomes the last and moves instead. A spare is
// closed as soon as that is safe (reapSpares); if it cannot be made (no
// socket), the last member moves while the program names its old index,
// for the microseconds until the next program: a connection arriving then
// is placed by the kernel's hash among the open members.
func (g *Group) clearLast(serving []*Member, probes map[uint16]int) {
	l := g.order[len(g.order)-1]
	if !named(l, serving, probes) {
		return
	}
	without := slices.DeleteFunc(slices.Clone(serving), func(s *Member) bool { return s == l })
	if len(without) > 0 {
		noL := maps.Clone(probes)
		maps.DeleteFunc(noL, func(_ uint16, id int) bool { return id == l.id })
		if g.attach(without, noL) == nil {
			return
		}
	}
	fd, err := listenSocket(g.fam, g.sa, true)
	if err != nil {
		return
	}
	g.order = append(g.order, &Member{id: -1, slot: -1, spare: true, f: os.NewFile(uintptr(fd), "steer:spare")})
}

func (g *Group) spares() int {
	n := 0
	for _, m := range g.order {
		if m.spare {
			n++
		}
	}
	return n
}

// reapSpares closes the spares it can close without a program ever naming
// a moved index (Random).
func (g *Group) reapSpares() {
	for {
		i := slices.IndexFunc(g.order, func(m *Member) bool { return m.spare })
		if i < 0 || g.serving == nil {
			return
		}
		last := len(g.order) - 1
		if i != last {
			l := g.order[last]
			if named(l, g.serving, g.probes) && len(g.serving) == 1 {
				return // it is the only serving member: wait for a later change
			}
			g.clearLast(g.serving, g.probes)
			if g.order[len(g.order)-1].spare && len(g.order)-1 != last {
				return // clearLast added a spare: no progress
			}
		}
		g.remove(g.order[i])
		if err := g.attach(g.serving, g.probes); err != nil {
			return
		}
	}
}

// closeMember closes m's socket; with out, first takes it out of its group
// (shutdown(SHUT_RD)), whoever else holds it.
func closeMember(m *Member, out bool) error {
	m.closed = true
	var err error
	if out {
		if e := unix.Shutdown(m.Fd(), unix.SHUT_RD); e != nil && !errors.Is(e, unix.ENOTCONN) {
			err = os.NewSyscallError("shutdown", e)
		}
	}
	if e := m.f.Close(); e != nil && err == nil {
		err = e
	}
	return err
}

// CloseAll closes every member and the group's program and maps: the end
// of the address. Connections still queued are reset.
func (g *Group) CloseAll() error {
	return g.end(true)
}

// Release closes the group's descriptors without taking any member out of
// the kernel's group: for a primary that has handed the group over to a
// new one (Export), whose copies keep the members, their order and the
// attached program alive.
func (g *Group) Release() error {
	return g.end(false)
}

func (g *Group) end(out bool) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil
	}
	g.closed = true
	var errs []error
	for i := len(g.order) - 1; i >= 0; i-- {
		errs = append(errs, closeMember(g.order[i], out && g.mode != Shared))
	}
	g.order = nil
	if g.shared != nil {
		errs = append(errs, g.shared.Close())
	}
	if g.ebpf != nil {
		errs = append(errs, g.ebpf.close())
	}
	for _, f := range g.mapFiles {
		errs = append(errs, f.Close())
	}
	return errors.Join(errs...)
}

// Given is the number of new connections the group's program has given m
// (RoundRobin only; since the group was created or imported).
func (g *Group) Given(m *Member) (uint64, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ebpf == nil {
		return 0, ErrUnsupported
	}
	if g.index(m) < 0 {
		return 0, fmt.Errorf("%w: %v", ErrNotMember, m)
	}
	return g.ebpf.count(m.slot)
}
