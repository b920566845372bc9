//go:build linux && (amd64 || arm64)

package adopt

import (
	"fmt"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Supported reports whether this build can adopt binds at all (Linux on
// amd64 or arm64); Probe says whether this system allows it.
const Supported = true

// filter is the BPF program: a call of this build's ABI to bind or listen
// (and, with tr.Unlink, to unlink and unlinkat; with tr.Guard, to shutdown
// and connect) goes to the supervisor; everything else, calls of another
// ABI included, runs untouched.
func filter(tr Traps) []unix.SockFilter {
	const (
		ldAbs = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
		jeq   = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		ret   = unix.BPF_RET | unix.BPF_K
		// Offsets in struct seccomp_data.
		offNr   = 0
		offArch = 4
	)
	nrs := []uint32{unix.SYS_BIND, unix.SYS_LISTEN}
	if tr.Unlink {
		nrs = append(nrs, unlinkCalls...)
	}
	if tr.Guard {
		nrs = append(nrs, unix.SYS_SHUTDOWN, unix.SYS_CONNECT)
	}
	prog := []unix.SockFilter{
		{Code: ldAbs, K: offArch},
		{Code: jeq, K: auditArch, Jt: 1},
		{Code: ret, K: unix.SECCOMP_RET_ALLOW},
		{Code: ldAbs, K: offNr},
	}
	for i, nr := range nrs {
		// Jump over the later comparisons and the ALLOW to the NOTIF.
		prog = append(prog, unix.SockFilter{Code: jeq, K: nr, Jt: uint8(len(nrs) - i)})
	}
	return append(prog,
		unix.SockFilter{Code: ret, K: unix.SECCOMP_RET_ALLOW},
		unix.SockFilter{Code: ret, K: unix.SECCOMP_RET_USER_NOTIF})
}

// install sets no_new_privs and puts the filter on the calling thread,
// returning the notification fd (close-on-exec). The caller holds its OS
// thread and execs on it: the filter is this thread's alone (a filter with
// a listener cannot be synchronised to the other threads), and execve keeps
// it.
func install(tr Traps) (int, error) {
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return -1, fmt.Errorf("prctl(PR_SET_NO_NEW_PRIVS): %w", err)
	}
	prog := filter(tr)
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	// WAIT_KILLABLE_RECV (Linux 6.0): once the primary has read a
	// notification, a signal other than a fatal one no longer interrupts
	// (and restarts) the call it is answering. SPEC_ALLOW: the filter is
	// no sandbox, so it must not make the kernel turn on a speculation
	// mitigation for the worker, which it did by default for any filter
	// before Linux 5.16 (Speculative Store Bypass Disable, which slows a
	// process down).
	flags := uintptr(unix.SECCOMP_FILTER_FLAG_NEW_LISTENER | unix.SECCOMP_FILTER_FLAG_SPEC_ALLOW |
		unix.SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV)
	for {
		fd, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, flags, uintptr(unsafe.Pointer(&fprog)))
		runtime.KeepAlive(prog)
		if errno == unix.EINVAL && flags&unix.SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV != 0 {
			flags &^= unix.SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
			continue
		}
		if errno != 0 {
			return -1, installError(errno)
		}
		return int(fd), nil
	}
}

func installError(errno unix.Errno) error {
	switch errno {
	case unix.EINVAL:
		return fmt.Errorf("the kernel has no seccomp user notification (Linux 5.0 or later; 5.9 for installing a socket): seccomp: %w", errno)
	case unix.ENOSYS, unix.EPERM, unix.EACCES:
		return fmt.Errorf("seccomp() refused (a container's seccomp profile, or a kernel without seccomp): %w", errno)
	case unix.EBUSY:
		return fmt.Errorf("seccomp: another filter with a listener is installed already: %w", errno)
	}
	return fmt.Errorf("seccomp: %w", errno)
}

// Worker is the exec step's part, to be called on the goroutine that then
// execs the command: it locks that goroutine to its OS thread for good,
// installs the filter there, and sends the notification fd to the primary
// over the unix socket sock (see EnvFD), then closes sock. It returns an
// error when it could not, after telling the primary why. A filter that was
// installed but could not be sent would fail every bind with ENOSYS: the
// caller must not exec then (fatal is true).
func Worker(sock int, tr Traps) (fatal bool, err error) {
	defer unix.Close(sock)
	// Never unlocked: the filter belongs to this thread, which must be
	// the one that execs.
	runtime.LockOSThread()
	nfd, err := install(tr)
	if err != nil {
		unix.Sendmsg(sock, []byte("error: "+err.Error()), nil, nil, 0)
		return false, err
	}
	defer unix.Close(nfd)
	if err := unix.Sendmsg(sock, []byte("ok"), unix.UnixRights(nfd), nil, 0); err != nil {
		return true, fmt.Errorf("cannot send the bind filter to the primary: %w", err)
	}
	return false, nil
}
