//go:build linux

package runtime

import (
	"context"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/handoff-dev/handoff/workerpool"
)

// orphanGrace is how long a zombie child must stay a zombie before the
// reaper takes it. handoff's own children are reaped by whoever started
// them the moment they exit: the pool (waitid on the worker's pid, then
// wait4), tableflip (exec.Cmd.Wait on a new primary), os/exec elsewhere. A
// zombie that outlives that, and is no worker of the pool, was re-parented
// to this process: an orphan.
const orphanGrace = 500 * time.Millisecond

// startReaper makes the primary a child subreaper and starts reaping the
// orphans that come to it; it returns the function that stops that.
//
// As a subreaper, the primary (not init) gets the processes its workers
// leave behind when they exit (a daemonized child): they stay its
// descendants, which Yama's ptrace_scope 1 requires for bind adoption to
// read their memory, and their exits come to it. As PID 1 (a container
// without an init) it gets every orphan of the namespace anyway. Either
// way it reaps them, by pid, until its very end.
func (p *primary) startReaper() (stop func()) {
	set := false
	var was int32
	if err := unix.Prctl(unix.PR_GET_CHILD_SUBREAPER, uintptr(unsafe.Pointer(&was)), 0, 0, 0); err == nil && was == 0 {
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			p.log.Debug("cannot become a child subreaper", zap.Error(err))
		} else {
			set = true
		}
	}
	if os.Getpid() == 1 {
		p.log.Info("running as PID 1: reaping orphans")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); p.reapOrphans(ctx) }()
	return func() {
		cancel()
		<-done
		if set {
			// Run returns to a program that may go on (library mode):
			// orphans go where they went before it.
			unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
		}
	}
}

// reapOrphans runs while the primary is a subreaper or PID 1 until ctx
// ends. On SIGCHLD, and every orphanGrace, it lists its zombie children
// and reaps, by pid, those that are not workers and have stayed zombies
// for orphanGrace. It never calls wait4(-1), which would steal the exit
// status of a worker or of a new primary from the goroutine waiting for
// it.
func (p *primary) reapOrphans(ctx context.Context) {
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGCHLD)
	defer signal.Stop(sigc)
	tick := time.NewTicker(orphanGrace)
	defer tick.Stop()
	seen := map[int]time.Time{} // zombie pid -> when first seen
	for {
		select {
		case <-ctx.Done():
			return
		case <-sigc:
		case <-tick.C:
			// A child's exit sends SIGCHLD: only a zombie seen already
			// is worth another look.
			if len(seen) == 0 {
				continue
			}
		}
		zombies := zombieChildren()
		if len(zombies) == 0 {
			clear(seen)
			continue
		}
		workers := map[int]bool{}
		for _, w := range p.pool.Workers() {
			workers[w.Pid] = true
		}
		now := time.Now()
		next := map[int]time.Time{}
		for _, pid := range zombies {
			if workers[pid] {
				continue
			}
			first, ok := seen[pid]
			if !ok {
				next[pid] = now
				continue
			}
			if now.Sub(first) < orphanGrace {
				next[pid] = first
				continue
			}
			var ws unix.WaitStatus
			if got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil); err == nil && got == pid {
				p.log.Info("orphan reaped", zap.Int("pid", pid), zap.String("status", workerpool.StatusString(ws)))
			}
		}
		seen = next
	}
}

// zombieChildren lists the children of this process that have exited but
// not been reaped (state Z in /proc/PID/stat). It reads the children of
// each of its threads (/proc/self/task/TID/children), and only without
// those files every process in /proc.
func zombieChildren() []int {
	var out []int
	for _, pid := range childPIDs() {
		if state, _, ok := procStat(pid); ok && state == "Z" {
			out = append(out, pid)
		}
	}
	return out
}

// childPIDs lists the children of this process.
func childPIDs() []int {
	self := strconv.Itoa(os.Getpid())
	tasks, err := os.ReadDir("/proc/self/task")
	if _, serr := os.Stat("/proc/self/task/" + self + "/children"); err != nil || serr != nil {
		// A kernel without CONFIG_PROC_CHILDREN.
		var out []int
		for pid := range childrenOf(os.Getpid()) {
			out = append(out, pid)
		}
		return out
	}
	var out []int
	for _, t := range tasks {
		// A thread that ended since has no file: it has no children.
		b, _ := os.ReadFile("/proc/self/task/" + t.Name() + "/children")
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				out = append(out, pid)
			}
		}
	}
	return out
}
