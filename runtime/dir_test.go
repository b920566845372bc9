//go:build linux

package runtime

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

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
