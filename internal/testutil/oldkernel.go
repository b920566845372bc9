//go:build linux

package testutil

import (
	"fmt"
	"os"
	"runtime"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// firstNewSyscall is the first system call number of the table shared by
// every architecture since Linux 5.1 (pidfd_send_signal); close_range
// (5.9), pidfd_open (5.3), clone3 (5.3), openat2 (5.6) and every later call
// are above it. On amd64 and arm64, Linux 4.18 has no call numbered at or
// above it.
const firstNewSyscall = 424

// auditArch is the seccomp_data.arch of this architecture.
var auditArch = map[string]uint32{"amd64": 0xc000003e, "arm64": 0xc00000b7}[runtime.GOARCH]

// OldKernelSupported reports whether OldKernelMain can work here.
func OldKernelSupported() bool { return auditArch != 0 }

// OldKernelMain, when EnvOldKernel is 1, installs a seccomp filter under
// which every system call newer than Linux 4.18 fails with ENOSYS, as on
// that kernel, and execs os.Args[1:] (with EnvOldKernel removed) under it;
// the filter holds for every process that one starts. It returns at once
// otherwise. Call it first in TestMain.
func OldKernelMain() { wrapperMain(EnvOldKernel, "old kernel", execOldKernel) }

func execOldKernel(argv []string) error {
	if auditArch == 0 {
		return fmt.Errorf("no seccomp filter for %s", runtime.GOARCH)
	}
	filter := []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: 4}, // arch
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: auditArch, Jt: 0, Jf: 3},
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: 0}, // nr
		{Code: unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K, K: firstNewSyscall, Jt: 0, Jf: 1},
		{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS)},
		{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ALLOW},
	}
	return execFiltered(EnvOldKernel, filter, argv, func() error {
		if _, err := unix.PidfdOpen(os.Getpid(), 0); err != unix.ENOSYS {
			return fmt.Errorf("the filter does not hold: pidfd_open gave %v", err)
		}
		return nil
	})
}

// execFiltered execs argv, with envKey removed from the environment, under
// filter (and no_new_privs), which then holds for the process and every
// process it starts; check, if not nil, runs under the filter first.
func execFiltered(envKey string, filter []unix.SockFilter, argv []string, check func() error) error {
	if len(argv) == 0 {
		return fmt.Errorf("nothing to exec")
	}
	env := withoutEnv(envKey)
	// The filter is the calling thread's: exec from that very thread.
	runtime.LockOSThread()
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %v", err)
	}
	if err := unix.Prctl(unix.PR_SET_SECCOMP, unix.SECCOMP_MODE_FILTER, uintptr(unsafe.Pointer(&prog)), 0, 0); err != nil {
		return fmt.Errorf("seccomp: %v", err)
	}
	if check != nil {
		if err := check(); err != nil {
			return err
		}
	}
	return syscall.Exec(argv[0], argv, env)
}
