//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package drain

import (
	"net"
	"syscall"
)

// inputPending reports whether bytes wait unread in the kernel receive
// buffer of c. It never blocks and does not consume anything.
func inputPending(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	pending := false
	_ = rc.Control(func(fd uintptr) {
		var b [1]byte
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		pending = err == nil && n > 0
	})
	return pending
}
