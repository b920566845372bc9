package runtime

import "golang.org/x/sys/unix"

// The primary (primary.go and the files it needs, each marked
// "//go:build linux") runs on Linux only: it forks workers with
// PR_SET_PDEATHSIG, waits for them with waitid, signals another primary
// through a pidfd and checks peers with SO_PEERCRED. platform_other.go is
// what library mode has instead elsewhere; this file is Linux's side of
// the few things both need.

// errNoPrimary, when not nil, says why this platform runs no primary: Main
// then serves standalone with a warning (runStandalone). It is nil on
// Linux; a test sets it to take the other platforms' path
// (TestNoPrimaryServesStandalone).
var errNoPrimary error

// socketpair returns a connected pair of unix stream sockets, both
// close-on-exec.
func socketpair() ([2]int, error) {
	return unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
}
