//go:build linux

package testutil

import (
	"fmt"
	"os"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// EnvNoPtrace, set to 1 in the environment of a test binary whose TestMain
// calls NoPtraceMain first, makes that process a wrapper: it execs its
// arguments (os.Args[1:]) without CAP_SYS_PTRACE, as root runs under
// Docker's default capability set.
const EnvNoPtrace = "HANDOFF_TESTUTIL_NO_PTRACE"

// NoPtraceMain, when EnvNoPtrace is 1, drops CAP_SYS_PTRACE from the
// capability bounding set and execs os.Args[1:] (with EnvNoPtrace removed):
// the exec leaves the capability out of the permitted and effective sets,
// for that process and every one it starts. It returns at once otherwise.
// Call it first in TestMain; it needs root (CAP_SETPCAP).
func NoPtraceMain() { wrapperMain(EnvNoPtrace, "no ptrace", execNoPtrace) }

// wrapperMain, when key is 1 in the environment, runs wrap with
// os.Args[1:], which execs them and returns only an error, to exit 126
// with it.
func wrapperMain(key, what string, wrap func(argv []string) error) {
	if os.Getenv(key) != "1" {
		return
	}
	if err := wrap(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "testutil: %s: %v\n", what, err)
		os.Exit(126)
	}
}

func execNoPtrace(argv []string) error {
	if len(argv) == 0 {
		return fmt.Errorf("nothing to exec")
	}
	// Capabilities are a thread's: drop and exec on the same one.
	runtime.LockOSThread()
	if err := unix.Prctl(unix.PR_CAPBSET_DROP, unix.CAP_SYS_PTRACE, 0, 0, 0); err != nil {
		return fmt.Errorf("PR_CAPBSET_DROP: %v", err)
	}
	// The inheritable set could bring it back through an exec.
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capget: %v", err)
	}
	for i := range data {
		data[i].Inheritable = 0
	}
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capset: %v", err)
	}
	return syscall.Exec(argv[0], argv, withoutEnv(EnvNoPtrace))
}

// withoutEnv is this process's environment without key.
func withoutEnv(key string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if len(kv) < len(key)+1 || kv[:len(key)+1] != key+"=" {
			env = append(env, kv)
		}
	}
	return env
}
