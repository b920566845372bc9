//go:build linux

package runtime

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoff-dev/handoff/internal/unixsock"
)

func TestRemoveStaleDirs(t *testing.T) {
	tmp := t.TempDir()
	// A pid that has exited and been reaped.
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	dead := cmd.Process.Pid
	stale := filepath.Join(tmp, "handoff-"+strconv.Itoa(dead)+"-123")
	live := filepath.Join(tmp, "handoff-"+strconv.Itoa(os.Getppid())+"-456")
	other := filepath.Join(tmp, "handoff-notapid")
	for _, d := range []string{stale, live, other} {
		if err := os.MkdirAll(filepath.Join(d, "sub"), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	removeStaleDirs(tmp)
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("directory of dead primary %d kept: %v", dead, err)
	}
	for _, d := range []string{live, other} {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("%s removed: %v", d, err)
		}
	}
}

// deadPid returns the pid of a process that has exited and been reaped:
// as a primary in another pid namespace looks from here.
func deadPid(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid
}

// A private directory is stale when its lock is free, whatever its pid
// says: one whose pid is not visible here (a primary in another pid
// namespace sharing /tmp) but whose lock is held is kept.
func TestRemoveStaleDirsByLock(t *testing.T) {
	tmp := t.TempDir()
	mk := func(name string) string {
		d := filepath.Join(tmp, name)
		if err := os.MkdirAll(filepath.Join(d, "sub"), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, dirLockName), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		return d
	}
	elsewhere := mk("handoff-" + strconv.Itoa(deadPid(t)) + "-1")
	held, err := unixsock.LockFile(filepath.Join(elsewhere, dirLockName), false)
	if err != nil {
		t.Fatal(err)
	}
	gone := mk("handoff-" + strconv.Itoa(os.Getppid()) + "-2") // a live pid, a free lock
	removeStaleDirs(tmp)
	if _, err := os.Stat(elsewhere); err != nil {
		t.Errorf("the directory of a primary whose pid is not visible here, lock held, was removed: %v", err)
	}
	if _, err := os.Stat(gone); !os.IsNotExist(err) {
		t.Errorf("a directory whose lock is free was kept: %v", err)
	}
	held.Close()
	removeStaleDirs(tmp)
	if _, err := os.Stat(elsewhere); !os.IsNotExist(err) {
		t.Errorf("the directory was kept once its lock was free: %v", err)
	}

	// Half-made directories: a fresh one (its primary is about to lock
	// it) is kept, one left long ago goes.
	fresh, old := mk(newDirPrefix+"1"), mk(newDirPrefix+"2")
	past := time.Now().Add(-time.Hour)
	os.Chtimes(filepath.Join(old, dirLockName), past, past)
	removeStaleDirs(tmp)
	if _, err := os.Stat(fresh); err != nil {
		t.Errorf("a directory being made was removed: %v", err)
	}
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Errorf("a half-made directory of an hour ago was kept: %v", err)
	}
}

// privateDir's directory is locked from the moment it has its name.
func TestPrivateDirLocked(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	dir, err := privateDir()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(filepath.Base(dir), dirPrefix+strconv.Itoa(os.Getpid())+"-") {
		t.Errorf("private directory %s", dir)
	}
	if !dirLive(dir, 0) {
		t.Errorf("the lock of a live primary's directory can be taken")
	}
	if ents, _ := os.ReadDir(filepath.Dir(dir)); len(ents) != 1 {
		t.Errorf("TMPDIR holds %v, want the one directory", ents)
	}
}

// Two primaries starting at once on one control path: the second, finding
// the path's lock held, leaves alone what is there, even a socket that
// does not answer yet (the first has bound it and not listened, or is
// between removing a stale one and binding), and is refused.
func TestClaimControl(t *testing.T) {
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
	first, err := claimControl(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Fatalf("the stale socket was not removed: %v", err)
	}
	stale() // the first primary's, not listening yet
	ownControl(first)
	second, err := claimControl(path)
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
	releaseControl(first, path, true)
	if _, err := os.Lstat(controlLockPath(path)); !os.IsNotExist(err) {
		t.Errorf("lock file left: %v", err)
	}
	third, err := claimControl(path)
	if err != nil {
		t.Fatalf("claim after the first stopped: %v", err)
	}
	releaseControl(third, path, false)
	if _, err := os.Lstat(controlLockPath(path)); err != nil {
		t.Errorf("a primary that hands over removed the lock file: %v", err)
	}
}

// A lock taken on a lock file that was removed meanwhile is dropped, and
// the file at the path locked instead.
func TestLockControlRemovedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.sock")
	a, err := lockControl(path)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(controlLockPath(path))
	b, err := lockControl(path)
	if err != nil {
		t.Fatalf("lock after the file was removed: %v", err)
	}
	defer b.Close()
	a.Close()
	if !sameFile(b, controlLockPath(path)) {
		t.Errorf("the lock is not on the file at the path")
	}
	if _, err := lockControl(path); !errors.Is(err, unixsock.ErrLocked) {
		t.Errorf("a second lock: %v, want unixsock.ErrLocked", err)
	}
}

// A lock held for an instant, as a command looking for live primaries
// holds it (controlAlive), does not stop a primary from taking it.
func TestLockControlWaitsForProbe(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.sock")
	probe, err := unixsock.LockFile(controlLockPath(path), true)
	if err != nil {
		t.Fatal(err)
	}
	time.AfterFunc(50*time.Millisecond, func() { probe.Close() })
	f, err := lockControl(path)
	if err != nil {
		t.Fatalf("lock while a probe held it for 50ms: %v", err)
	}
	f.Close()
}

// controlAlive tells a live primary's socket by its held lock, removes a
// dead one's socket and lock file, and dials a socket without a lock
// file.
func TestControlAlive(t *testing.T) {
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
	lock, err := lockControl(live)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if !controlAlive(live) {
		t.Error("a socket whose lock is held: not alive")
	}
	dead := bound("dead.sock", true)
	os.WriteFile(controlLockPath(dead), nil, 0o600)
	if controlAlive(dead) {
		t.Error("a socket whose lock nobody holds: alive")
	}
	for _, f := range []string{dead, controlLockPath(dead)} {
		if _, err := os.Lstat(f); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left: %v", f, err)
		}
	}
	if old := bound("old.sock", true); !controlAlive(old) {
		t.Error("a socket without a lock file that answers: not alive")
	}
	if gone := bound("gone.sock", false); controlAlive(gone) {
		t.Error("a socket without a lock file that nobody listens on: alive")
	}
}
