//go:build linux

package control

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoff-dev/handoff/internal/unixsock"
)

// Two primaries starting at once on one control path: the second, finding
// the path's lock held, leaves alone what is there, even a socket that
// does not answer yet (the first has bound it and not listened, or is
// between removing a stale one and binding), and is refused.
func TestClaim(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.sock")
	stale := func() {
		t.Helper()
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
			t.Fatal(err)
		}
	}
	stale() // left by a primary that was killed
	first, err := claim(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Fatalf("the stale socket was not removed: %v", err)
	}
	stale() // the first primary's, not listening yet
	own(first)
	second, err := claim(path)
	var live *unixsock.LiveError
	if !errors.As(err, &live) {
		second.Close()
		t.Fatalf("second claim: %v, want a *unixsock.LiveError", err)
	}
	if live.Pid != os.Getpid() {
		t.Errorf("the refusal names pid %d, want the lock holder's %d", live.Pid, os.Getpid())
	}
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("the second primary removed the first's socket: %v", err)
	}
	// The first stops for good: its lock file goes, and the path is free.
	release(first, path, true)
	if _, err := os.Lstat(lockPath(path)); !os.IsNotExist(err) {
		t.Errorf("lock file left: %v", err)
	}
	third, err := claim(path)
	if err != nil {
		t.Fatalf("claim after the first stopped: %v", err)
	}
	release(third, path, false)
	if _, err := os.Lstat(lockPath(path)); err != nil {
		t.Errorf("a primary that hands over removed the lock file: %v", err)
	}
}

// A lock taken on a lock file that was removed meanwhile is dropped, and
// the file at the path locked instead.
func TestLockSocketRemovedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.sock")
	a, err := lockSocket(path)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(lockPath(path))
	b, err := lockSocket(path)
	if err != nil {
		t.Fatalf("lock after the file was removed: %v", err)
	}
	defer b.Close()
	a.Close()
	if !sameFile(b, lockPath(path)) {
		t.Errorf("the lock is not on the file at the path")
	}
	if _, err := lockSocket(path); !errors.Is(err, unixsock.ErrLocked) {
		t.Errorf("a second lock: %v, want unixsock.ErrLocked", err)
	}
}

// A lock held for an instant, as a command looking for live primaries
// holds it (alive), does not stop a primary from taking it.
func TestLockSocketWaitsForProbe(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.sock")
	probe, err := unixsock.LockFile(lockPath(path), true)
	if err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(50*time.Millisecond, func() { probe.Close() })
	f, err := lockSocket(path)
	if err != nil {
		t.Fatalf("lock while a probe held it for 50ms: %v", err)
	}
	f.Close()
}

// alive tells a live primary's socket by its held lock, removes a
// dead one's socket and lock file, and dials a socket without a lock
// file.
func TestAlive(t *testing.T) {
	dir := t.TempDir()
	bound := func(name string, listen bool) string {
		t.Helper()
		path := filepath.Join(dir, name)
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
			t.Fatal(err)
		}
		if listen {
			unix.Listen(fd, 1)
			t.Cleanup(func() { unix.Close(fd) })
		} else {
			unix.Close(fd)
		}
		return path
	}
	live := bound("live.sock", false)
	lock, err := lockSocket(live)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if !alive(live) {
		t.Error("a socket whose lock is held: not alive")
	}
	dead := bound("dead.sock", true)
	os.WriteFile(lockPath(dead), nil, 0o600)
	if alive(dead) {
		t.Error("a socket whose lock nobody holds: alive")
	}
	for _, f := range []string{dead, lockPath(dead)} {
		if _, err := os.Lstat(f); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left: %v", f, err)
		}
	}
	if old := bound("old.sock", true); !alive(old) {
		t.Error("a socket without a lock file that answers: not alive")
	}
	if gone := bound("gone.sock", false); alive(gone) {
		t.Error("a socket without a lock file that nobody listens on: alive")
	}
}
