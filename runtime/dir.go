//go:build linux

package runtime

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/handoff-dev/handoff/internal/unixsock"
)

// dirPrefix starts the name of a primary's private directory (mode 0700, in
// $TMPDIR) that holds the workers' notify sockets and the hand-over socket:
// handoff-PID-RANDOM.
const dirPrefix = "handoff-"

// newDirPrefix starts the name of a private directory being made: it gets
// its final name once its lock is held.
const newDirPrefix = "." + dirPrefix + "new-"

// privateDir creates this primary's directory, first removing those left by
// primaries of the same user that were killed before they could clean up.
// The directory holds a lock file (dirLockName) that this primary holds
// until it exits: a directory whose lock can be taken is stale. It is made
// under a name that removeStaleDirs does not take for a primary's, locked,
// and only then renamed: a directory named handoff-… always has its lock
// held while its primary lives. The lock's descriptor is never closed: it
// goes with the process (one primary per process).
//
// A unix socket path has at most 107 bytes, and the sockets inside are
// named like w12-3456.sock: a longer $TMPDIR falls back to /tmp.
func privateDir() (string, error) {
	tmp := os.TempDir()
	if len(tmp) > maxTmpDirLen {
		tmp = "/tmp"
	}
	removeStaleDirs(tmp)
	work, err := os.MkdirTemp(tmp, newDirPrefix)
	if err != nil {
		return "", err
	}
	lock, err := unixsock.LockFile(filepath.Join(work, dirLockName), true)
	if err != nil {
		os.RemoveAll(work)
		return "", err
	}
	dir := filepath.Join(tmp, dirPrefix+strconv.Itoa(os.Getpid())+"-"+strings.TrimPrefix(filepath.Base(work), newDirPrefix))
	if err := os.Rename(work, dir); err != nil {
		lock.Close()
		os.RemoveAll(work)
		return "", err
	}
	heldLocks = append(heldLocks, lock)
	return dir, nil
}

// heldLocks keeps the private directories' locks open for the life of the
// process.
var heldLocks []*os.File

// maxTmpDirLen leaves room for /handoff-PID-RANDOM/wSLOT-SEQ.sock.
const maxTmpDirLen = 107 - len("/handoff-4194304-1234567890/w9999-99999999.sock")

// removeStaleDirs removes the private directories in tmp of this user's
// primaries that are gone: their lock is free. The pid in a directory's
// name is not looked at (a primary in another pid namespace that shares
// tmp is alive although no process here has that pid), except for a
// directory without a lock file, left by a handoff that made none.
func removeStaleDirs(tmp string) {
	entries, err := os.ReadDir(tmp)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		pid := 0
		switch name := e.Name(); {
		case strings.HasPrefix(name, newDirPrefix):
			// Being made, or left half-made: judged by its lock alone.
		case strings.HasPrefix(name, dirPrefix):
			pidStr, _, ok := strings.Cut(strings.TrimPrefix(name, dirPrefix), "-")
			n, err := strconv.Atoi(pidStr)
			if !ok || err != nil || n <= 0 || n == os.Getpid() {
				continue
			}
			pid = n
		default:
			continue
		}
		path := filepath.Join(tmp, e.Name())
		var st syscall.Stat_t
		if syscall.Lstat(path, &st) != nil || st.Uid != uint32(os.Getuid()) {
			continue
		}
		if pid == 0 {
			// One being made has its lock file created, then locked: only
			// one left half-made long ago is taken for stale.
			if fi, err := os.Lstat(filepath.Join(path, dirLockName)); err != nil || time.Since(fi.ModTime()) < time.Minute {
				continue
			}
		}
		if !dirLive(path, pid) {
			os.RemoveAll(path)
		}
	}
}
