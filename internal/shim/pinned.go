//go:build linux

package shim

import (
	"fmt"
	"strconv"

	"golang.org/x/sys/unix"
)

// pinnedExec returns what to exec for the command at path, and env less
// EnvExecFD and EnvExecVia. Without EnvExecFD that is path itself.
// Otherwise it is the pinned file, through EnvExecVia when that leads to
// it, else /proc/self/fd/N; its descriptor is close-on-exec, so nothing
// of it reaches the command. A #! script is the exception: the kernel
// hands the interpreter the name it was exec'd by, so a script is exec'd
// by path while path still names the pinned file ($0 as without a pin),
// and otherwise by the descriptor, which then stays open for the
// interpreter to read.
func pinnedExec(path string, env []string) (string, []string, error) {
	fdStr, via := "", ""
	out := env[:0:0]
	for _, kv := range env {
		switch {
		case hasKey(kv, EnvExecFD):
			fdStr = kv[len(EnvExecFD)+1:]
		case hasKey(kv, EnvExecVia):
			via = kv[len(EnvExecVia)+1:]
		default:
			out = append(out, kv)
		}
	}
	if fdStr == "" {
		return path, env, nil
	}
	fd, err := strconv.Atoi(fdStr)
	var st unix.Stat_t
	if err == nil && fd > 2 {
		err = unix.Fstat(fd, &st)
	} else if err == nil {
		err = unix.EBADF
	}
	if err != nil {
		return "", nil, fmt.Errorf("pinned file at %s=%s: %v", EnvExecFD, fdStr, err)
	}
	target := "/proc/self/fd/" + strconv.Itoa(fd)
	if via != "" && sameFile(via, &st) {
		target = via
	}
	if !isScript(fd) {
		_, err = unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC)
		return target, out, err
	}
	if sameFile(path, &st) {
		return path, out, nil
	}
	_, err = unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0)
	return target, out, err
}

// sameFile reports whether path leads to the file st describes.
func sameFile(path string, st *unix.Stat_t) bool {
	var ps unix.Stat_t
	return unix.Stat(path, &ps) == nil && ps.Dev == st.Dev && ps.Ino == st.Ino
}

// isScript reports whether the file at fd starts with #! (an unreadable
// one, pinned by an O_PATH descriptor, counts as a binary).
func isScript(fd int) bool {
	var b [2]byte
	n, _ := unix.Pread(fd, b[:], 0)
	return n == 2 && b == [2]byte{'#', '!'}
}
