//go:build linux

// Package shim is the exec step between the primary and a worker's command.
//
// The systemd socket-activation protocol wants LISTEN_PID to be the pid of
// the process that reads LISTEN_FDS, which os/exec cannot know before the
// fork. The primary therefore starts its own executable (/proc/self/exe) with
// EnvMarker set; that process, still the same pid, sets LISTEN_PID to its
// own pid, marks every fd past the listeners close-on-exec, and execs the
// worker's command in place. WATCHDOG_PID is set the same way when
// WATCHDOG_USEC is given: sd_watchdog_enabled() ignores a watchdog meant
// for another pid. With bind adoption (internal/adopt), it also installs
// the filter that sends the command's binds to the primary, on the thread
// that then execs (adopt.go).
package shim

import (
	"errors"
	"fmt"
	"math"
	"os"
	"runtime"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// textBusyRetry bounds how long exec is retried while the file is still
// open for writing elsewhere (ETXTBSY, golang/go#22315).
const textBusyRetry = time.Second

// The exec is traced from the main thread only (see traceMe): a shim
// keeps its main goroutine there (LockOSThread in an init function holds
// it through main).
func init() {
	if _, ok := os.LookupEnv(EnvMarker); ok {
		runtime.LockOSThread()
	}
}

// Main turns this process into the worker's command when it was started as
// a shim, and returns at once otherwise. Call it first in main, before any
// other work: it never returns in a shim.
func Main() {
	path, ok := os.LookupEnv(EnvMarker)
	if !ok {
		return
	}
	os.Exit(run(path, os.Args[1:], os.Environ()))
}

// run execs path and only returns (with an exit code) when that failed.
func run(path string, argv, environ []string) int {
	if len(argv) == 0 {
		argv = []string{path}
	}
	env, nfds, chanFD := commandEnv(environ)
	// Nothing past stdio and the listeners (and the message channel, which
	// comes right after them) reaches the command, even an fd that was
	// inherited by the primary without close-on-exec.
	keep := 3 + nfds
	if chanFD == keep {
		keep++
	}
	if err := closeOnExecFrom(keep); err != nil {
		fmt.Fprintf(os.Stderr, "handoff: cannot mark inherited fds close-on-exec before starting %s: %v\n", path, err)
		return ExitCannotExec
	}
	// The generation's pinned file, if the launcher passed one (after the
	// close-on-exec marking: see pinned.go).
	exe, env, trace, err := pinnedExec(path, env)
	if err != nil {
		cannotExec(path, err)
		return ExitCannotExec
	}
	// Last before the exec, on this goroutine's thread, which it locks.
	env, ok := adoptBinds(env)
	if !ok {
		return ExitCannotExec
	}
	if trace {
		runtime.LockOSThread()
		traceMe()
	}
	return execCommand(path, exe, argv, env)
}

// commandEnv is the command's environment made from the shim's, environ:
// without EnvMarker, with LISTEN_PID and WATCHDOG_PID set to this pid (if
// LISTEN_FDS, WATCHDOG_USEC are given); with the number of listeners
// (LISTEN_FDS) and the message channel's fd (EnvChannelFD, -1 if none).
func commandEnv(environ []string) (env []string, nfds, chanFD int) {
	env = make([]string, 0, len(environ)+1)
	chanFD = -1
	watchdog := false
	for _, kv := range environ {
		switch {
		case hasKey(kv, EnvMarker), hasKey(kv, "LISTEN_PID"), hasKey(kv, "WATCHDOG_PID"):
			continue
		case hasKey(kv, "LISTEN_FDS"):
			nfds, _ = strconv.Atoi(kv[len("LISTEN_FDS="):])
		case hasKey(kv, EnvChannelFD):
			chanFD, _ = strconv.Atoi(kv[len(EnvChannelFD)+1:])
		case hasKey(kv, "WATCHDOG_USEC"):
			watchdog = true
		}
		env = append(env, kv)
	}
	if nfds > 0 {
		env = append(env, "LISTEN_PID="+strconv.Itoa(os.Getpid()))
	}
	if watchdog {
		env = append(env, "WATCHDOG_PID="+strconv.Itoa(os.Getpid()))
	}
	return env, nfds, chanFD
}

// execCommand execs exe (the command path names), retrying for
// textBusyRetry while the file is busy, and returns the exit code of the
// failure.
func execCommand(path, exe string, argv, env []string) int {
	deadline := time.Now().Add(textBusyRetry)
	for {
		err := syscall.Exec(exe, argv, env)
		if errors.Is(err, syscall.ETXTBSY) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		cannotExec(path, err)
		if errors.Is(err, syscall.ENOENT) {
			return ExitNotFound
		}
		return ExitCannotExec
	}
}

func hasKey(kv, key string) bool {
	return len(kv) > len(key) && kv[len(key)] == '=' && kv[:len(key)] == key
}

// closeRange is unix.CloseRange; tests replace it to take the fall-back.
var closeRange = unix.CloseRange

// closeOnExecFrom marks every fd from first on close-on-exec:
// close_range(CLOSE_RANGE_CLOEXEC) from Linux 5.11, else (ENOSYS before
// 5.9, EINVAL for the flag before 5.11) each fd listed in /proc/self/fd.
func closeOnExecFrom(first int) error {
	if closeRange(uint(first), math.MaxUint32, unix.CLOSE_RANGE_CLOEXEC) == nil {
		return nil
	}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return err
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd < first {
			continue
		}
		// EBADF: the directory's own fd, closed by now.
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil && err != unix.EBADF {
			return err
		}
	}
	return nil
}
