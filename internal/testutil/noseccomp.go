//go:build linux

package testutil

import "golang.org/x/sys/unix"

// EnvNoSeccomp, set to 1 in the environment of a test binary whose
// TestMain calls NoSeccompMain first, makes that process a wrapper: it
// execs its arguments (os.Args[1:]) under a seccomp policy that refuses
// seccomp() itself, as some container runtimes' policies do.
const EnvNoSeccomp = "HANDOFF_TESTUTIL_NO_SECCOMP"

// NoSeccompMain, when EnvNoSeccomp is 1, installs a seccomp filter under
// which seccomp() fails with EPERM and execs os.Args[1:] (with
// EnvNoSeccomp removed) under it; the filter holds for every process that
// one starts. It returns at once otherwise. Call it first in TestMain.
func NoSeccompMain() { wrapperMain(EnvNoSeccomp, "no seccomp", execNoSeccomp) }

func execNoSeccomp(argv []string) error {
	filter := []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: 0}, // nr
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: unix.SYS_SECCOMP, Jt: 0, Jf: 1},
		{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)},
		{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ALLOW},
	}
	return execFiltered(EnvNoSeccomp, filter, argv, nil)
}
