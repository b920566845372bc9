package runtime

import (
	"errors"
	"os"
	"syscall"

	"github.com/handoff-dev/handoff/internal/unixsock"
)

// A live primary proves it is alive by holding flock(2) locks, which work
// across pid namespaces (a primary in another container that shares /tmp
// and the uid is alive although kill(pid, 0) finds no such pid) and go
// away with the process, however it ends:
//
//   - on its private directory's lock file (dirLockName), for its whole
//     life: a directory whose lock can be taken is stale;
//   - on PATH.lock beside its control socket, taken before the socket
//     path is checked, cleared of a stale socket or bound, and passed to
//     the new primary of a self-upgrade through tableflip (the same open
//     file description, so the lock holds while either primary runs): see
//     internal/control.

// dirLockName is the lock file inside a primary's private directory.
const dirLockName = "lock"

// dirLive reports whether the private directory dir belongs to a live
// primary: its lock is held. A directory with no lock file was left by a
// handoff that did not lock its directories; it is judged by its pid.
func dirLive(dir string, pid int) bool {
	f, err := unixsock.LockFile(dir+"/"+dirLockName, false)
	switch {
	case err == nil:
		f.Close()
		return false
	case errors.Is(err, unixsock.ErrLocked):
		return true
	case errors.Is(err, os.ErrNotExist):
		return pid <= 0 || syscall.Kill(pid, 0) != syscall.ESRCH
	}
	return true
}
