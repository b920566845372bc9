//go:build linux

package runtime

import (
	"bytes"
	"os"
	"strconv"
	"syscall"
	"time"

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

// wait waits up to d for the process to exit, and reports whether it has.
func (p *process) wait(d time.Duration) bool {
	if p == nil {
		return true
	}
	end := time.Now().Add(d)
	for {
		if p.fd >= 0 {
			// A pidfd is readable once its process has exited.
			ms := max(int(time.Until(end)/time.Millisecond), 0)
			fds := []unix.PollFd{{Fd: int32(p.fd), Events: unix.POLLIN}}
			n, err := unix.Poll(fds, min(ms, 100))
			if n > 0 || (err != nil && err != unix.EINTR) {
				return n > 0
			}
		} else {
			if start, err := startTime(p.pid); err != nil || start != p.start {
				return true
			}
			time.Sleep(20 * time.Millisecond)
		}
		if time.Now().After(end) {
			return false
		}
	}
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
	f, ok := statFields(pid)
	if !ok || len(f) < 20 {
		return 0, syscall.EINVAL
	}
	return strconv.ParseUint(string(f[19]), 10, 64)
}

// findNewPrimary finds the new primary that tableflip started for an
// upgrade and that has not connected yet: the child of this process whose
// environment names the hand-over socket addr (no worker's does). nil if
// there is none.
func findNewPrimary(addr string) *process {
	want := []byte(envHandover + "=" + addr)
	for pid := range childrenOf(os.Getpid()) {
		proc := openProcess(pid)
		// Checked again once the pidfd holds the process: a pid reused
		// since is not signalled.
		if _, ppid, ok := procStat(pid); ok && ppid == os.Getpid() && environHas(pid, want) {
			return proc
		}
		proc.release()
	}
	return nil
}

// childrenOf maps the processes whose parent is ppid to their state (R,
// S, Z, ...), from /proc.
func childrenOf(ppid int) map[int]string {
	names, _ := os.ReadDir("/proc")
	out := map[int]string{}
	for _, e := range names {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if state, parent, ok := procStat(pid); ok && parent == ppid {
			out[pid] = state
		}
	}
	return out
}

// procStat reads pid's state and parent from /proc/PID/stat.
func procStat(pid int) (state string, ppid int, ok bool) {
	f, ok := statFields(pid)
	if !ok || len(f) < 2 {
		return "", 0, false
	}
	ppid, err := strconv.Atoi(string(f[1]))
	return string(f[0]), ppid, err == nil
}

// statFields returns the fields of /proc/PID/stat from the state (field
// 3) on. The command name before them, in parentheses, may hold anything:
// they are counted after its last ')'.
func statFields(pid int) ([][]byte, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, false
	}
	return bytes.Fields(b[i+1:]), true
}

// environHas reports whether pid's environment holds the entry kv.
func environHas(pid int, kv []byte) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		return false
	}
	for _, e := range bytes.Split(b, []byte{0}) {
		if bytes.Equal(e, kv) {
			return true
		}
	}
	return false
}
