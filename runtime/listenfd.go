//go:build linux

package runtime

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/handoff-dev/handoff/internal/unixsock"
)

// The workers' listening sockets are in blocking mode, as systemd passes
// sockets (NonBlocking=no): a worker written to that contract calls a
// plain blocking accept() on fd 3. O_NONBLOCK lives on the open file
// description, which the primary, every worker and every later primary
// share, so:
//
//   - the first primary clears O_NONBLOCK once, right after the bind,
//     before any worker runs (it never accepts on these sockets itself);
//   - they go through tableflip as plain files (Fds.AddFile, Fds.File),
//     never as listeners: tableflip's Listen and Listener wrap an inherited
//     socket with net.FileListener, which sets O_NONBLOCK on the shared
//     description, and a blocking accept in a worker of the old primary
//     would fail with EAGAIN from then on;
//   - nothing else in handoff touches the flag. A worker that sets it
//     (Go's net.FileListener, Node) sets it for every worker, as it would
//     under systemd.
//
// The control and --metrics sockets, on which the primary accepts itself,
// are other sockets, non-blocking, and stay tableflip listeners.

// listenerKey names a worker listener among tableflip's files: its network
// and address as configured, and a rank for the second and later
// listeners of the same spelling (two 127.0.0.1:0 are two sockets).
func listenerKey(l Listener, rank int) string {
	key := "handoff-listen " + l.Network + " " + l.Address
	if rank > 0 {
		key += " #" + strconv.Itoa(rank+1)
	}
	return key
}

// bindListener returns a close-on-exec fd of l's socket for the workers,
// in blocking mode, and its bound address: the socket inherited from the
// previous primary under key, else a new one.
func (p *primary) bindListener(l Listener, key string) (fd int, addr string, err error) {
	if p.upg.HasParent() {
		f, err := p.upg.Fds.File(key)
		if err != nil {
			return -1, "", fmt.Errorf("listen %s: %v", l.Address, err)
		}
		if f != nil {
			fd, err := dupConn(f)
			f.Close()
			if err == nil {
				addr, err = boundAddr(fd)
			}
			if err != nil {
				if fd >= 0 {
					unix.Close(fd)
				}
				return -1, "", fmt.Errorf("listen %s: inherited socket: %v", l.Address, err)
			}
			if l.Network == "unix" {
				p.sockFiles = append(p.sockFiles, l.Address)
			}
			return fd, addr, nil
		}
	} else if l.Network == "unix" {
		if err := unixsock.RemoveStale(l.Address); err != nil {
			return -1, "", fmt.Errorf("listen unix:%s: %v", l.Address, err)
		}
	}
	ln, err := net.Listen(l.Network, l.Address)
	if err != nil {
		return -1, "", listenError(l, err)
	}
	if ul, ok := ln.(*net.UnixListener); ok {
		// The file goes when the primary stops without a successor
		// (removeSocketFiles), not when this listener closes.
		ul.SetUnlinkOnClose(false)
		p.sockFiles = append(p.sockFiles, l.Address)
	}
	addr = ln.Addr().String()
	fd, err = rawFd(ln)
	// The workers get fd; this listener, in the primary's poller, is not
	// needed.
	ln.Close()
	if err == nil {
		err = unix.SetNonblock(fd, false)
	}
	if err == nil {
		err = addFile(p.upg.Fds.AddFile, key, fd)
	}
	if err != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		return -1, "", fmt.Errorf("listen %s: %v", l.Address, err)
	}
	return fd, addr, nil
}

// addFile hands a duplicate of fd to tableflip (add is Fds.AddFile), for
// a new primary to inherit. The *os.File made for it is in blocking mode,
// so os.NewFile neither registers it with the poller nor changes the
// flag.
func addFile(add func(string, *os.File) error, key string, fd int) error {
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 3)
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(dup), key)
	defer f.Close()
	return add(key, f)
}

// boundAddr is a listening socket's address as net.Listener.Addr writes it.
func boundAddr(fd int) (string, error) {
	if t, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || t != 1 {
		return "", errors.New("not a listening socket")
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return "", err
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return (&net.TCPAddr{IP: net.IP(sa.Addr[:]), Port: sa.Port}).String(), nil
	case *unix.SockaddrInet6:
		zone := ""
		if sa.ZoneId != 0 {
			if ifi, err := net.InterfaceByIndex(int(sa.ZoneId)); err == nil {
				zone = ifi.Name
			} else {
				zone = strconv.Itoa(int(sa.ZoneId))
			}
		}
		return (&net.TCPAddr{IP: net.IP(sa.Addr[:]), Port: sa.Port, Zone: zone}).String(), nil
	case *unix.SockaddrUnix:
		return sa.Name, nil
	}
	return "", fmt.Errorf("socket of unknown family %T", sa)
}

// removeSocketFiles removes the unix socket files of the worker listeners
// as a primary stops for good, as tableflip does for its own listeners: a
// primary that handed over leaves them to its successor.
func (p *primary) removeSocketFiles() {
	if p.successor != nil {
		return
	}
	for _, path := range p.sockFiles {
		if strings.HasPrefix(path, "@") {
			continue // abstract: no file
		}
		if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
			os.Remove(path)
		}
	}
}

// rawFd returns a close-on-exec duplicate of a listener's fd, taken without
// os.File.Fd, which would put the socket into blocking mode for every
// process that shares it (golang/go#43894).
func rawFd(ln net.Listener) (int, error) {
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return -1, fmt.Errorf("%T has no file descriptor", ln)
	}
	return dupConn(sc)
}

// dupConn returns a close-on-exec duplicate of c's fd, taken through
// RawConn.Control, which leaves the file's mode alone.
func dupConn(c syscall.Conn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	dup, derr := -1, error(nil)
	if err := rc.Control(func(fd uintptr) {
		dup, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 3)
	}); err != nil {
		return -1, err
	}
	return dup, derr
}
