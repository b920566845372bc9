//go:build !linux

package runtime

import (
	"context"
	"fmt"
	goruntime "runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// errNoPrimary says why this platform runs no primary (see
// platform_linux.go): Main serves standalone, with a warning, and Run
// returns it.
var errNoPrimary = fmt.Errorf("handoff's primary needs Linux (pidfds, PR_SET_PDEATHSIG, SO_PEERCRED; this is %s/%s)",
	goruntime.GOOS, goruntime.GOARCH)

// Run is the primary (see primary.go), which needs Linux: here it only
// returns an error saying so. A program in library mode (Main) serves
// standalone instead.
func Run(ctx context.Context, cfg Config) error {
	return errNoPrimary
}

// socketpair returns a connected pair of unix stream sockets, both
// close-on-exec (under syscall.ForkLock: no SOCK_CLOEXEC here).
func socketpair() ([2]int, error) {
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		return fds, err
	}
	unix.CloseOnExec(fds[0])
	unix.CloseOnExec(fds[1])
	return fds, nil
}
