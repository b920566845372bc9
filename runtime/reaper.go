//go:build linux

package runtime

import (
	"context"
	"os"
	"os/signal"
	"syscall"
	"time"

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

// reapOrphans runs while the primary is PID 1 (a container without an
// init, where every orphan of the namespace is re-parented to it) until
// ctx ends. On SIGCHLD, and every orphanGrace, it lists its zombie children
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
		}
		zombies := zombieChildren(os.Getpid())
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

// zombieChildren lists the processes whose parent is ppid and which have
// exited but not been reaped (state Z in /proc/PID/stat).
func zombieChildren(ppid int) []int {
	var out []int
	for pid, state := range childrenOf(ppid) {
		if state == "Z" {
			out = append(out, pid)
		}
	}
	return out
}
