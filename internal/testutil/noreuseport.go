//go:build linux

package testutil

import "golang.org/x/sys/unix"

// EnvNoReusePort, set to 1 in the environment of a test binary whose
// TestMain calls NoReusePortMain first, makes that process a wrapper: it
// execs its arguments (os.Args[1:]) as on a kernel without SO_REUSEPORT
// (before Linux 3.9), where setting it fails with ENOPROTOOPT.
const EnvNoReusePort = "HANDOFF_TESTUTIL_NO_REUSEPORT"

// NoReusePortMain, when EnvNoReusePort is 1, installs a seccomp filter
// under which setsockopt(SOL_SOCKET, SO_REUSEPORT) fails with ENOPROTOOPT
// and execs os.Args[1:] (with EnvNoReusePort removed) under it; the
// filter holds for every process that one starts. It returns at once
// otherwise. Call it first in TestMain.
func NoReusePortMain() { wrapperMain(EnvNoReusePort, "no SO_REUSEPORT", execNoReusePort) }

func execNoReusePort(argv []string) error {
	// seccomp_data: nr at 0, args[i] at 16+8i (the low half first, on the
	// little-endian architectures handoff runs on).
	filter := []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: 0}, // nr
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: unix.SYS_SETSOCKOPT, Jt: 0, Jf: 5},
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: 16 + 8}, // level
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: unix.SOL_SOCKET, Jt: 0, Jf: 3},
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: 16 + 16}, // optname
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: unix.SO_REUSEPORT, Jt: 0, Jf: 1},
		{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ERRNO | uint32(unix.ENOPROTOOPT)},
		{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ALLOW},
	}
	return execFiltered(EnvNoReusePort, filter, argv, nil)
}
