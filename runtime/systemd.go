//go:build linux

package runtime

import (
	"github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sys/unix"
)

// notifySystemd tells systemd (when it started the primary with
// NOTIFY_SOCKET) about the primary's state. Workers never see that socket.
func notifySystemd(state string) {
	daemon.SdNotify(false, state)
}

func monotonicUsec() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return ts.Nano() / 1000
}
