//go:build !linux

package unixsock

import (
	"net"

	"golang.org/x/sys/unix"
)

// PeerPID is 0: the peer's pid is only known on Linux.
func PeerPID(*net.UnixConn) int { return 0 }

// PeerUID is the uid of the process at the other end of c
// (LOCAL_PEERCRED).
func PeerUID(c *net.UnixConn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	uid := -1
	var xerr error
	if err := rc.Control(func(fd uintptr) {
		var xu *unix.Xucred
		if xu, xerr = unix.GetsockoptXucred(int(fd), unix.SOL_LOCAL, unix.LOCAL_PEERCRED); xerr == nil {
			uid = int(xu.Uid)
		}
	}); err != nil {
		return -1, err
	}
	return uid, xerr
}
