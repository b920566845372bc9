//go:build linux

package runtime

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// process is another primary, held by a pidfd so that a signal never
// reaches a process that took over its pid after it exited (tableflip
// reaps the new primary it started, in its own goroutine). A nil
// *process signals nothing.
type process struct {
	pid int
	fd  int // -1 where pidfds are not available: signal by pid
}

func openProcess(pid int) *process {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		fd = -1
	}
	return &process{pid: pid, fd: fd}
}

func (p *process) signal(sig syscall.Signal) error {
	if p == nil {
		return syscall.ESRCH
	}
	if p.fd >= 0 {
		return unix.PidfdSendSignal(p.fd, sig, nil, 0)
	}
	return syscall.Kill(p.pid, sig)
}

func (p *process) release() {
	if p != nil && p.fd >= 0 {
		unix.Close(p.fd)
		p.fd = -1
	}
}
