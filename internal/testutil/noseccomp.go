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

// EnvNoSeccomp, set to 1 in the environment of a test binary whose
// TestMain calls NoSeccompMain first, makes that process a wrapper: it
// execs its arguments (os.Args[1:]) under a seccomp policy that refuses
// seccomp() itself, as some container runtimes' policies do.
const EnvNoSeccomp = "HANDOFF_TESTUTIL_NO_SECCOMP"

// NoSeccompMain, when EnvNoSeccomp is 1, installs a seccomp filter under
// which seccomp() fails with EPERM and execs os.Args[1:] (with
// EnvNoSeccomp removed) under it; the filter holds for every process that
// one starts. It returns at once otherwise. Call it first in TestMain.
func NoSeccompMain() {
	if os.Getenv(EnvNoSeccomp) != "1" {
		return
	}
	if err := execNoSeccomp(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "testutil: no seccomp: %v\n", err)
		os.Exit(126)
	}
}

func execNoSeccomp(argv []string) error {
	if len(argv) == 0 {
		return fmt.Errorf("nothing to exec")
	}
	var env []string
	for _, kv := range os.Environ() {
		if len(kv) < len(EnvNoSeccomp)+1 || kv[:len(EnvNoSeccomp)+1] != EnvNoSeccomp+"=" {
			env = append(env, kv)
		}
	}
	// The filter is the calling thread's: exec from that very thread.
	runtime.LockOSThread()
	filter := []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: 0}, // nr
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: unix.SYS_SECCOMP, Jt: 0, Jf: 1},
		{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)},
		{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ALLOW},
	}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("no_new_privs: %v", err)
	}
	if err := unix.Prctl(unix.PR_SET_SECCOMP, unix.SECCOMP_MODE_FILTER, uintptr(unsafe.Pointer(&prog)), 0, 0); err != nil {
		return fmt.Errorf("seccomp: %v", err)
	}
	return syscall.Exec(argv[0], argv, env)
}
