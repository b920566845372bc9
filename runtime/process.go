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
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "", 0, false
	}
	// pid (comm) state ppid ...: comm may hold anything, so parse after
	// its last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return "", 0, false
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < 2 {
		return "", 0, false
	}
	ppid, err = strconv.Atoi(string(f[1]))
	return string(f[0]), ppid, err == nil
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
