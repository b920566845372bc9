//go:build linux

package sockets

import (
	"net"
	"os"
	"slices"
	"testing"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/handoff-dev/handoff/internal/steer"
	"github.com/handoff-dev/handoff/workerpool"
)

// newLayer is a layer of two listeners: a random-mode group on loopback,
// made with its first member, and a shared socket.
func newLayer(t *testing.T) (*Layer, *steer.Group, int) {
	t.Helper()
	g, err := steer.New("127.0.0.1:0", steer.Random)
	if err != nil {
		t.Fatal(err)
	}
	first, err := g.Add()
	if err != nil {
		g.CloseAll()
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	l := NewLayer(zap.NewNop(), []string{"steered", "shared"})
	l.AddGroup(0, g, first)
	l.AddShared(1, int(f.Fd()))
	return l, g, int(f.Fd())
}

func newSet(t *testing.T, l *Layer) *Set {
	t.Helper()
	s, err := l.New(0)
	if err != nil {
		t.Fatal(err)
	}
	return s.(*Set)
}

func TestLayer(t *testing.T) {
	l, g, shared := newLayer(t)
	defer l.CloseAll(false)
	if l.Mode() != steer.Random || l.Shared(0) || !l.Shared(1) || !(*Layer)(nil).Shared(0) {
		t.Fatalf("mode %s, shared %v %v", l.Mode(), l.Shared(0), l.Shared(1))
	}
	first := newSet(t, l)
	if got := first.FDs(); got[0] != g.Members()[0].Fd() || got[1] != shared {
		t.Fatalf("the first worker's fds %v: want its group's first member and the shared socket", got)
	}
	second := newSet(t, l)
	if got := second.FDs(); got[0] == first.FDs()[0] || got[1] != shared || len(g.Members()) != 2 {
		t.Fatalf("a new worker's fds %v (the first's %v), %d members", got, first.FDs(), len(g.Members()))
	}
	target, err := l.ProbeTarget(second.FDs())
	if err != nil || target.Group != g || target.Member.Fd() != second.FDs()[0] {
		t.Fatalf("probe target %+v, %v", target, err)
	}
	if _, err := l.ProbeTarget([]int{shared, shared}); err == nil {
		t.Fatal("a probe target among shared sockets")
	}
	if _, err := (*Layer)(nil).ProbeTarget(second.FDs()); err == nil {
		t.Fatal("a probe target without a layer")
	}
	l.Serve([]workerpool.Socks{first})
	l.Close(first) // the only one served: closes at the next Serve
	if len(g.Members()) != 2 {
		t.Fatalf("%d members: the only one served closed", len(g.Members()))
	}
	l.Serve([]workerpool.Socks{second})
	if ms := g.Members(); len(ms) != 1 || ms[0].Fd() != second.FDs()[0] {
		t.Fatalf("members %v after steering to the second worker", ms)
	}
	if q, given := second.Queue(); q != 0 || given != 0 {
		t.Fatalf("queue %d, given %d", q, given)
	}
}

// TestHandOver exports a layer's groups as a primary hands them over and
// imports them as the new one does: each slot's worker's member is found
// again.
func TestHandOver(t *testing.T) {
	l, g, shared := newLayer(t)
	first, second := newSet(t, l), newSet(t, l)
	l.Serve([]workerpool.Socks{first, second})

	files := map[string]*os.File{}
	add := func(key string, f *os.File) error {
		fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return err
		}
		files[key] = os.NewFile(uintptr(fd), key)
		return nil
	}
	file := func(key string) (*os.File, error) { return files[key], nil }
	t.Cleanup(func() {
		for _, f := range files {
			f.Close()
		}
	})
	if err := l.Export(add, []workerpool.Socks{second, nil, first}); err != nil {
		t.Fatal(err)
	}
	if !l.Frozen() {
		t.Fatal("not frozen after the export")
	}
	if _, err := l.New(0); err == nil {
		t.Fatal("new sockets from a frozen layer")
	}
	if err := (*Layer)(nil).Export(add, nil); err != nil {
		t.Fatal(err)
	}

	if _, _, found, err := ImportGroup(file, "shared"); found || err != nil {
		t.Fatalf("a group for a shared listener: %v, %v", found, err)
	}
	g2, slots, found, err := ImportGroup(file, "steered")
	if !found || err != nil {
		t.Fatalf("import: %v, %v", found, err)
	}
	defer g2.CloseAll()
	if got, want := slots, []int{second.members[0].ID(), -1, first.members[0].ID()}; !slices.Equal(got, want) {
		t.Fatalf("slots %v, want %v", got, want)
	}
	l2 := NewLayer(zap.NewNop(), []string{"steered", "shared"})
	fd := l2.AddImported(0, g2, slots)
	l2.AddShared(1, shared)
	if fd != g2.Members()[0].Fd() {
		t.Fatalf("the group's fd %d, not its first member's", fd)
	}
	imported := l2.Imported()
	if len(imported) != 2 || imported[0].members[0].ID() != slots[0] || imported[2].members[0].ID() != slots[2] ||
		imported[0].FDs()[1] != shared || !imported[0].fromOld {
		t.Fatalf("imported %v", imported)
	}
	// No first sockets: a new worker of the new primary gets a new member.
	s, err := l2.New(0)
	if err != nil {
		t.Fatal(err)
	}
	if id := s.(*Set).members[0].ID(); slices.Contains(slots, id) {
		t.Fatalf("a new worker got member %d of the old primary's", id)
	}
	// The old workers' members close once the old primary is gone.
	l2.Close(imported[0])
	if len(g2.Members()) != 3 {
		t.Fatalf("%d members: closed while the old primary may drain", len(g2.Members()))
	}
	l2.OldGone()
	if len(g2.Members()) != 2 {
		t.Fatalf("%d members after the old primary is gone", len(g2.Members()))
	}

	l.Thaw()
	if l.Frozen() {
		t.Fatal("frozen after the thaw")
	}
	l.CloseAll(true)
	if len(g.Members()) != 0 {
		t.Fatalf("%d members left after the release", len(g.Members()))
	}
}
