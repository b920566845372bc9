package unixsock

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// Probe and RemoveStale tell nothing, a file, a socket nobody listens on
// and a live one apart; only the stale socket is removed.
func TestProbeAndRemoveStale(t *testing.T) {
	dir := t.TempDir()
	if err := Probe(filepath.Join(dir, "none")); err != nil {
		t.Errorf("nothing at the path: %v", err)
	}
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o600)
	if err := RemoveStale(file); !errors.Is(err, ErrNotSocket) {
		t.Errorf("a file: %v, want ErrNotSocket", err)
	}
	stale := filepath.Join(dir, "stale.sock")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: stale}); err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	if err := Probe(stale); !errors.Is(err, ErrStale) {
		t.Errorf("a socket nobody listens on: %v, want ErrStale", err)
	}
	if err := RemoveStale(stale); err != nil {
		t.Errorf("removing a stale socket: %v", err)
	}
	if _, err := os.Lstat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the stale socket is still there: %v", err)
	}
	live := filepath.Join(dir, "live.sock")
	ln, err := net.Listen("unix", live)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var le *LiveError
	if err := RemoveStale(live); !errors.As(err, &le) {
		t.Fatalf("a live socket: %v, want a *LiveError", err)
	}
	if le.Pid != 0 && le.Pid != os.Getpid() {
		t.Errorf("the live socket's listener: pid %d, want %d", le.Pid, os.Getpid())
	}
	if _, err := os.Lstat(live); err != nil {
		t.Errorf("the live socket was removed: %v", err)
	}
}

// LockFile takes a lock once: a second open file gets ErrLocked until the
// first is closed.
func TestLockFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lock")
	if _, err := LockFile(path, false); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("no file, not created: %v", err)
	}
	a, err := LockFile(path, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := LockFile(path, false); !errors.Is(err, ErrLocked) {
		t.Errorf("a second lock: %v, want ErrLocked", err)
	}
	a.Close()
	b, err := LockFile(path, false)
	if err != nil {
		t.Fatalf("the lock once free: %v", err)
	}
	b.Close()
}
