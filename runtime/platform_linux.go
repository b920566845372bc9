package runtime

import (
	"net"

	"golang.org/x/sys/unix"
)

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

// peerPID is the pid of the process at the other end of c, 0 if unknown.
func peerPID(c *net.UnixConn) int {
	cred, err := peerCred(c)
	if err != nil {
		return 0
	}
	return int(cred.Pid)
}

// socketpair returns a connected pair of unix stream sockets, both
// close-on-exec.
func socketpair() ([2]int, error) {
	return unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
}

// peerUID is the uid of the process at the other end of c (SO_PEERCRED:
// for a listening socket, the process that called listen).
func peerUID(c *net.UnixConn) (int, error) {
	cred, err := peerCred(c)
	if err != nil {
		return -1, err
	}
	return int(cred.Uid), nil
}
