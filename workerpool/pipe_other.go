//go:build !linux

package workerpool

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// pipeCloexec makes a pipe whose ends are closed on exec; without pipe2,
// no fork may come between the pipe and the flags.
func pipeCloexec(p []int) error {
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()
	if err := unix.Pipe(p); err != nil {
		return err
	}
	unix.CloseOnExec(p[0])
	unix.CloseOnExec(p[1])
	return nil
}
