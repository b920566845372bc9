//go:build linux

package integration

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// markEnv is set, with a value unique to one test, in the environment of
// every primary a test starts; workers inherit it, so every process a test
// caused can be found in /proc even after it was re-parented.
const markEnv = "ITEST_HANDOFF_MARK"

// procStat is what the tests need from /proc/PID/stat.
type procStat struct {
	State byte
	PPid  int
}

func readStat(pid int) (procStat, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, false
	}
	// The command name is in parentheses and may hold anything: parse
	// after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return procStat{}, false
	}
	f := strings.Fields(string(b[i+2:]))
	if len(f) < 2 {
		return procStat{}, false
	}
	ppid, _ := strconv.Atoi(f[1])
	return procStat{State: f[0][0], PPid: ppid}, true
}

// alive reports whether pid is a running (not zombie) process.
func alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	st, ok := readStat(pid)
	return ok && st.State != 'Z' && st.State != 'X'
}

func allPIDs() []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// descendants returns the live processes below root in the parent chain.
func descendants(root int) []int {
	children := map[int][]int{}
	for _, pid := range allPIDs() {
		if st, ok := readStat(pid); ok && st.State != 'Z' && st.State != 'X' {
			children[st.PPid] = append(children[st.PPid], pid)
		}
	}
	var out []int
	queue := []int{root}
	seen := map[int]bool{root: true}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			if !seen[c] {
				seen[c] = true
				out = append(out, c)
				queue = append(queue, c)
			}
		}
	}
	sort.Ints(out)
	return out
}

// hasMark reports whether pid's environment holds markEnv=mark.
func hasMark(pid int, mark string) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		return false
	}
	want := []byte(markEnv + "=" + mark)
	for _, kv := range bytes.Split(b, []byte{0}) {
		if bytes.Equal(kv, want) {
			return true
		}
	}
	return false
}

// markedPIDs returns the live processes that carry mark.
func markedPIDs(mark string) []int {
	var out []int
	self := os.Getpid()
	for _, pid := range allPIDs() {
		if pid != self && alive(pid) && hasMark(pid, mark) {
			out = append(out, pid)
		}
	}
	return out
}

// exeUnder reports whether pid runs an executable inside dir (a binary
// replaced since shows as "PATH (deleted)", still inside dir).
func exeUnder(pid int, dir string) bool {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return false
	}
	return strings.HasPrefix(exe, filepath.Clean(dir)+"/")
}

// ours reports whether pid is a process of the test identified by mark and
// dir: it carries the mark or runs a binary from the test's directory.
func ours(pid int, mark, dir string) bool {
	return hasMark(pid, mark) || exeUnder(pid, dir)
}

// signalOurs sends sig to pid only if it is a process of this test. The pid
// is pinned with a pidfd first, so a pid reused by an unrelated process
// between the check and the signal is never hit.
func signalOurs(pid int, sig syscall.Signal, mark, dir string) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if !ours(pid, mark, dir) {
		return fmt.Errorf("pid %d is not a process of this test", pid)
	}
	return unix.PidfdSendSignal(fd, sig, nil, 0)
}

// fdCount counts pid's open file descriptors.
func fdCount(pid int) (int, error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return 0, err
	}
	return len(ents), nil
}

// fdLinks maps each open fd of pid to what it refers to ("socket:[123]",
// "pipe:[45]", "/path", "anon_inode:[eventpoll]").
func fdLinks(pid int) (map[int]string, error) {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	out := map[int]string{}
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		l, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		out[n] = l
	}
	return out, nil
}

// waitGone polls until none of pids is alive, or the deadline passes; it
// returns the ones still alive.
func waitGone(pids []int, d time.Duration) []int {
	end := time.Now().Add(d)
	for {
		var left []int
		for _, p := range pids {
			if alive(p) {
				left = append(left, p)
			}
		}
		if len(left) == 0 || time.Now().After(end) {
			return left
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitRefused polls until a TCP connection to addr is refused.
func waitRefused(addr string, d time.Duration) error {
	end := time.Now().Add(d)
	for n := 0; ; n++ {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		} else if errors.Is(err, syscall.ECONNREFUSED) {
			return nil
		}
		if time.Now().After(end) || n >= 1000 {
			if err == nil {
				return fmt.Errorf("%s still accepts connections after %s", addr, d)
			}
			return fmt.Errorf("%s: dial failed but not refused after %s: %v", addr, d, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
