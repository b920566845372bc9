//go:build linux

package shim

import (
	"fmt"
	"strconv"

	"golang.org/x/sys/unix"
)

// pinnedExec returns what to exec for the command at path, env less
// EnvExecFD, EnvExecVia and EnvExecTrace, and whether EnvExecTrace asked
// for the exec to be traced. Without EnvExecFD that is path itself.
// Otherwise it is the pinned file, through EnvExecVia when that leads to
// it, else /proc/self/fd/N; its descriptor is close-on-exec, so nothing
// of it reaches the command. (A #! script is never passed as a
// descriptor: the launcher passes its pinned interpreter, the script's
// path among the arguments, see internal/pin's Exec.)
func pinnedExec(path string, env []string) (string, []string, bool, error) {
	fdStr, via, trace := "", "", false
	out := env[:0:0]
	for _, kv := range env {
		switch {
		case hasKey(kv, EnvExecFD):
			fdStr = kv[len(EnvExecFD)+1:]
		case hasKey(kv, EnvExecVia):
			via = kv[len(EnvExecVia)+1:]
		case hasKey(kv, EnvExecTrace):
			trace = true
		default:
			out = append(out, kv)
		}
	}
	if fdStr == "" {
		return path, out, false, nil
	}
	fd, err := strconv.Atoi(fdStr)
	var st unix.Stat_t
	if err == nil && fd > 2 {
		err = unix.Fstat(fd, &st)
	} else if err == nil {
		err = unix.EBADF
	}
	if err != nil {
		return "", nil, false, fmt.Errorf("pinned file at %s=%s: %v", EnvExecFD, fdStr, err)
	}
	target := "/proc/self/fd/" + strconv.Itoa(fd)
	if via != "" && sameFile(via, &st) {
		target = via
	}
	_, err = unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC)
	return target, out, trace, err
}

// sameFile reports whether path leads to the file st describes.
func sameFile(path string, st *unix.Stat_t) bool {
	var ps unix.Stat_t
	return unix.Stat(path, &ps) == nil && ps.Dev == st.Dev && ps.Ino == st.Ino
}

// traceMe asks the parent to trace this thread, the one that execs, from
// now on (see EnvExecTrace). Only the main thread may: the exec keeps the
// pid of the thread group, which is what the parent waits for, and a
// traced thread that is not the leader would stop under another id. The
// shim runs on the main thread (init locks it there); if it does not, or
// ptrace is not allowed here (Yama's ptrace_scope 3, a seccomp policy),
// the exec is not traced and only the primary's check before the fork
// applies.
func traceMe() {
	if unix.Gettid() != unix.Getpid() {
		return
	}
	unix.Syscall(unix.SYS_PTRACE, unix.PTRACE_TRACEME, 0, 0)
}
