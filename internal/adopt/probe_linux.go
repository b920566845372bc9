//go:build linux && (amd64 || arm64)

package adopt

import (
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// probeTimeout bounds the probe's round trip, which takes well under a
// millisecond where it works.
const probeTimeout = 2 * time.Second

// Probe reports whether binds can be adopted on this system: nil if so,
// else why not. It runs the whole round once, inside this process but on
// an OS thread of its own that ends with the probe: no_new_privs and the
// filter go on that thread alone, which then binds port 0 (which must run
// untouched) and the address of a listening socket of the probe's (which
// must come back as that very socket), answered by the code that answers
// workers. It takes well under a millisecond.
func Probe() error {
	lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("probe socket: %w", err)
	}
	defer unix.Close(lfd)
	loopback := [4]byte{127, 0, 0, 1}
	if err := unix.Bind(lfd, &unix.SockaddrInet4{Addr: loopback}); err != nil {
		return fmt.Errorf("probe socket: %w", err)
	}
	if err := unix.Listen(lfd, 1); err != nil {
		return fmt.Errorf("probe socket: %w", err)
	}
	sa, err := unix.Getsockname(lfd)
	if err != nil {
		return fmt.Errorf("probe socket: %w", err)
	}
	port := sa.(*unix.SockaddrInet4).Port
	s, err := NewSupervisor([]Listener{{Name: "probe", Network: "tcp", Addr: "127.0.0.1:" + strconv.Itoa(port), FD: lfd}}, nil)
	if err != nil {
		return err
	}

	// The probe's thread says it is done on a pipe, which the loop below
	// polls with the notification fd.
	var done [2]int
	if err := unix.Pipe2(done[:], unix.O_CLOEXEC); err != nil {
		return err
	}
	defer unix.Close(done[0])
	installed := make(chan int, 1)
	result := make(chan error, 1)
	go func() {
		defer unix.Close(done[1])
		// Never unlocked: the thread carries the filter and no_new_privs,
		// and ends with this goroutine. (Go never starts a thread from a
		// locked one, so nothing else inherits them.)
		runtime.LockOSThread()
		nfd, err := install(false)
		if err != nil {
			installed <- -1
			result <- err
			return
		}
		installed <- nfd
		result <- probeBinds(lfd, port)
	}()
	nfd := <-installed
	if nfd < 0 {
		return <-result
	}
	defer func() {
		if nfd >= 0 {
			unix.Close(nfd)
		}
	}()
	var failed error
	deadline := time.Now().Add(probeTimeout)
	for {
		pfd := []unix.PollFd{{Fd: int32(nfd), Events: unix.POLLIN}, {Fd: int32(done[0]), Events: unix.POLLIN}}
		unix.Poll(pfd, 100)
		if pfd[0].Revents&unix.POLLIN != 0 {
			if err := s.handle(nfd, s.log, func() {}); err != nil && failed == nil {
				failed = err
			}
			continue
		}
		if pfd[1].Revents != 0 {
			return errors.Join(failed, <-result)
		}
		if time.Now().After(deadline) {
			// A bind still waiting for an answer fails with ENOSYS.
			unix.Close(nfd)
			nfd = -1
			failed = errors.Join(failed, errors.New("no answer to the probe's bind in time"))
			return errors.Join(failed, <-result)
		}
	}
}

// probeBinds runs on the filtered thread.
func probeBinds(lfd, port int) error {
	loopback := [4]byte{127, 0, 0, 1}
	other, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(other)
	if err := unix.Bind(other, &unix.SockaddrInet4{Addr: loopback}); err != nil {
		return fmt.Errorf("a bind to port 0 did not run: %w", err)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: loopback, Port: port}); err != nil {
		return fmt.Errorf("a bind to a listener's address was not adopted: %w", err)
	}
	var got, want unix.Stat_t
	if err := unix.Fstat(fd, &got); err != nil {
		return err
	}
	if err := unix.Fstat(lfd, &want); err != nil {
		return err
	}
	if got.Ino != want.Ino || got.Dev != want.Dev {
		return errors.New("a bind to a listener's address did not get the listener")
	}
	if err := unix.Listen(fd, 1); err != nil {
		return fmt.Errorf("listen on an adopted socket: %w", err)
	}
	return nil
}
