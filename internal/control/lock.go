package control

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/handoff-dev/handoff/internal/unixsock"
)

// A live primary holds PATH.lock beside its control socket (flock(2),
// which works across pid namespaces and goes away with the process,
// however it ends): taken before the socket path is checked, cleared of a
// stale socket or bound, and passed to the new primary of a self-upgrade
// through tableflip (the same open file description, so the lock holds
// while either primary runs). That is how Find tells a live primary's
// socket from a dead one's (alive), and how two primaries starting at
// once on one path never remove each other's socket (claim).

// lockKey names the control socket's lock among tableflip's files.
const lockKey = "handoff-control-lock"

// lockPatience is how long lockSocket retries a held lock.
const lockPatience = 300 * time.Millisecond

// lockPath is the lock file of the control socket at path.
func lockPath(path string) string { return path + ".lock" }

// lockSocket takes the lock of the control socket at path. A primary
// that stops for good removes the lock file; a lock taken on a file that
// was removed meanwhile is dropped and the file opened anew, so that two
// primaries never hold two different files of the one path.
func lockSocket(path string) (*os.File, error) {
	lp := lockPath(path)
	// A command looking for live primaries (alive) holds a lock for an
	// instant: only a lock held longer belongs to a primary.
	deadline := time.Now().Add(lockPatience)
	for i := 0; ; i++ {
		f, err := unixsock.LockFile(lp, true)
		if errors.Is(err, unixsock.ErrLocked) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if err != nil {
			return nil, err
		}
		if sameFile(f, lp) {
			return f, nil
		}
		f.Close()
		if i == 10 {
			return nil, fmt.Errorf("%s keeps being replaced", lp)
		}
	}
}

// sameFile reports whether path names the file f has open.
func sameFile(f *os.File, path string) bool {
	fi, err := f.Stat()
	if err != nil {
		return false
	}
	pi, err := os.Lstat(path)
	return err == nil && os.SameFile(fi, pi)
}

// alive reports whether the control socket at path belongs to a live
// primary, without dialing it: the primary holds its lock file. A
// socket whose lock nobody holds was left by a primary that died: it is
// removed with its lock file, under the lock (a primary starting on the
// path meanwhile waits for it, see lockSocket, then takes a new file).
// A socket without a lock file (from a handoff that did not lock the
// path) is dialed.
func alive(path string) bool {
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode()&os.ModeSocket == 0 {
		return false
	}
	lp := lockPath(path)
	lock, err := unixsock.LockFile(lp, false)
	switch {
	case errors.Is(err, unixsock.ErrLocked):
		return true
	case err == nil:
		if sameFile(lock, lp) {
			os.Remove(path)
			os.Remove(lp)
		}
		lock.Close()
		return false
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// claim makes path this primary's control socket path: it takes the
// path's lock (unixsock.ErrLocked becomes a *unixsock.LiveError naming the
// primary that answers there, when one does), then removes a stale socket
// file. Nothing is removed without the lock: two primaries starting at
// once cannot remove each other's socket.
func claim(path string) (*os.File, error) {
	lock, err := lockSocket(path)
	if errors.Is(err, unixsock.ErrLocked) {
		// Held by a primary that may not listen yet: whatever is at path
		// is left alone.
		live := &unixsock.LiveError{}
		errors.As(unixsock.Probe(path), &live)
		// The pid that answers there, as the lock file names it: the
		// socket's peer credentials name the primary that first
		// listened, which may have handed over since.
		if b, err := os.ReadFile(lockPath(path)); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
				live.Pid = pid
			}
		}
		return nil, live
	}
	if err != nil {
		return nil, fmt.Errorf("lock %s: %v", lockPath(path), unwrapAll(err))
	}
	if err := unixsock.RemoveStale(path); err != nil {
		lock.Close()
		return nil, err
	}
	return lock, nil
}

// own writes this process's pid into the control socket's lock file: the
// primary that answers on the socket from now on.
func own(lock *os.File) {
	if lock == nil {
		return
	}
	lock.Truncate(0)
	lock.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
}

// release lets go of the control socket's lock; remove also removes the
// lock file, as the socket file goes: this primary stops for good.
func release(lock *os.File, path string, remove bool) {
	if lock == nil {
		return
	}
	if remove && sameFile(lock, lockPath(path)) {
		os.Remove(lockPath(path))
	}
	lock.Close()
}
