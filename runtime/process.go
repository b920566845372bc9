//go:build linux

package runtime

import (
	"bytes"
	"os"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// process is another primary, held by a pidfd so that a signal never
// reaches a process that took over its pid after it exited (tableflip
// reaps the new primary it started, in its own goroutine). A nil
// *process signals nothing.
//
// Without pidfds (pidfd_open is Linux 5.3; it may also be refused by a
// seccomp profile) it is signalled by pid, and only while /proc shows the
// same process: the start time read when it was opened. A pid is reused
// only after it was reaped and the pid space went round, so the check and
// the kill(2) right after it cannot reach another process in practice.
type process struct {
	pid   int
	fd    int    // -1 where pidfds are not available: signal by pid
	start uint64 // the process's start time (/proc/PID/stat), when fd is -1
}

// pidfdOpen is unix.PidfdOpen; tests replace it to take the fall-back.
var pidfdOpen = unix.PidfdOpen

func openProcess(pid int) *process {
	fd, err := pidfdOpen(pid, 0)
	if err == nil {
		return &process{pid: pid, fd: fd}
	}
	start, _ := startTime(pid)
	return &process{pid: pid, fd: -1, start: start}
}

func (p *process) signal(sig syscall.Signal) error {
	if p == nil {
		return syscall.ESRCH
	}
	if p.fd >= 0 {
		return unix.PidfdSendSignal(p.fd, sig, nil, 0)
	}
	if start, err := startTime(p.pid); err != nil || start == 0 || start != p.start {
		return syscall.ESRCH
	}
	return syscall.Kill(p.pid, sig)
}

func (p *process) release() {
	if p != nil && p.fd >= 0 {
		unix.Close(p.fd)
		p.fd = -1
	}
}

// startTime reads a process's start time, in clock ticks since boot
// (field 22 of /proc/PID/stat), which tells it from a later process that
// got the same pid. A zombie keeps its start time until it is reaped.
func startTime(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name, in parentheses, may hold anything: count fields
	// after the last ')', which is followed by field 3 (the state).
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, syscall.EINVAL
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < 20 {
		return 0, syscall.EINVAL
	}
	return strconv.ParseUint(string(f[19]), 10, 64)
}
