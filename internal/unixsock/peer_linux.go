package unixsock

import (
	"net"

	"golang.org/x/sys/unix"
)

// PeerCred is the credential of the process at the other end of c
// (SO_PEERCRED: for a listening socket, the process that called listen).
func PeerCred(c *net.UnixConn) (*unix.Ucred, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	return cred, cerr
}

// PeerPID is the pid of the process at the other end of c, 0 if unknown.
func PeerPID(c *net.UnixConn) int {
	cred, err := PeerCred(c)
	if err != nil {
		return 0
	}
	return int(cred.Pid)
}

// PeerUID is the uid of the process at the other end of c (SO_PEERCRED:
// for a listening socket, the process that called listen).
func PeerUID(c *net.UnixConn) (int, error) {
	cred, err := PeerCred(c)
	if err != nil {
		return -1, err
	}
	return int(cred.Uid), nil
}
