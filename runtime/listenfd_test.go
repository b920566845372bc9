//go:build linux

package runtime

import (
	"net"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// A new primary learns an inherited socket's address from the fd: it must
// read as the first primary's net.Listener wrote it (the status, the
// "listening" event and the default control path use it).
func TestBoundAddr(t *testing.T) {
	for _, c := range []struct{ network, addr string }{
		{"tcp", "127.0.0.1:0"},
		{"tcp", "[::1]:0"},
		{"tcp", ":0"},
		{"unix", filepath.Join(t.TempDir(), "a.sock")},
	} {
		ln, err := net.Listen(c.network, c.addr)
		if err != nil {
			t.Logf("%s %s: %v (skipped)", c.network, c.addr, err)
			continue
		}
		fd, err := rawFd(ln)
		if err != nil {
			t.Fatal(err)
		}
		got, err := boundAddr(fd)
		unix.Close(fd)
		if want := ln.Addr().String(); err != nil || got != want {
			t.Errorf("%s %s: boundAddr = %q, %v; want %q", c.network, c.addr, got, err, want)
		}
		ln.Close()
	}
	// Not a listening socket.
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	if got, err := boundAddr(fds[0]); err == nil {
		t.Errorf("boundAddr of a connected socket = %q, want an error", got)
	}
}

func TestListenerKey(t *testing.T) {
	l := Listener{Network: "tcp", Address: "127.0.0.1:0"}
	if a, b := listenerKey(l, 0), listenerKey(l, 1); a == b || a != "handoff-listen tcp 127.0.0.1:0" {
		t.Errorf("keys %q and %q: want distinct keys, the first without a rank", a, b)
	}
}
