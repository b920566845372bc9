//go:build linux

package integration

import (
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/runtime"
)

// TestNewPrimaryKilledMidRoll: the new primary of a self-upgrade under
// load is SIGKILLed (an OOM kill, kill -9) right after it took slot 0;
// its workers die with it. The old primary carries on as if the upgrade
// had never begun: it ends the deploy as failed, reclaims slot 0 with a
// worker of its own generation, keeps the pid file, serves with N workers
// of the old version, and leaves no process of the new primary behind.
// Only requests on the new primary's worker may fail: the load has 8
// keep-alive and 8 new-connection clients, each with at most one request
// in flight, so at most 16.
func TestNewPrimaryKilledMidRoll(t *testing.T) {
	t.Parallel()
	newPrimaryLostMidRoll(t, syscall.SIGKILL)
}

// TestNewPrimaryStoppedMidRoll: the same with SIGSTOP — the new primary
// hangs (a debugger, a frozen cgroup) with slot 0 taken. The old primary
// waits no longer than the self-upgrade's bound (from the pool's size,
// --ready-timeout, --drain-timeout and 2 × --min-uptime, plus a minute),
// then ends the new primary and its workers and serves alone, as above.
func TestNewPrimaryStoppedMidRoll(t *testing.T) {
	t.Parallel()
	newPrimaryLostMidRoll(t, syscall.SIGSTOP)
}

func newPrimaryLostMidRoll(t *testing.T, sig syscall.Signal) {
	const (
		workers = 3
		// clients of startLoad: each has at most one request in flight
		// on the new primary's worker when it dies.
		maxLost = 8 + 8
	)
	p, load := servingUnderLoad(t, Options{Workers: workers, MinUptime: "200ms",
		Flags: []string{"--ready-timeout", "3s", "--drain-timeout", "2s"}})
	old := p.PID
	// The new generation's workers are slow to get ready: the roll is
	// still on slot 1 when the new primary is hit.
	mark, started := p.beginDeploy("slowready", true)
	gen := started.Int0("generation")
	bound, ok := started.Duration("timeout")
	if !ok {
		t.Fatalf("\"upgrade started\" without a timeout: %s", started.Raw)
	}
	// The new primary's slot 0 worker serves and the old one retires.
	p.mustLog(mark, 30*time.Second, old, "worker retiring", func(e Event) bool {
		return e.Str("reason") == "handed over" && e.Int0("slot") == 0
	})
	successor := 0
	for _, pid := range p.PrimaryPIDs() {
		if pid != old {
			successor = pid
		}
	}
	if successor == 0 || !alive(successor) {
		t.Fatalf("no live new primary in the log (primaries %v)\n%s", p.PrimaryPIDs(), p.Tail(60))
	}
	newWorkers := descendants(successor)
	before := load.Snapshot()
	hit := time.Now()
	p.Signal(successor, sig)
	t.Logf("new primary %d (workers %v) sent %v with %d requests done, %d failed; upgrade bound %v",
		successor, newWorkers, sig, before.Requests, before.Failures, bound)

	// The deploy ends as failed, within the bound.
	wait := 30 * time.Second
	if sig == syscall.SIGSTOP {
		wait = bound + 60*time.Second
	}
	end, ok := p.Log.Wait(mark, wait, func(e Event) bool {
		return isDeployEnd(e) && e.Int0("generation") == gen && e.Int0("primary") == old
	})
	if !ok {
		t.Fatalf("generation %d: the old primary logged no end within %s of the %v\n%s", gen, wait, sig, p.Tail(80))
	}
	t.Logf("%s %v after the %v: %s", end.Msg, time.Since(hit).Round(time.Millisecond), sig, end.Raw)
	if end.Msg == "upgrade finished" {
		t.Errorf("generation %d finished although its new primary was hit with %v", gen, sig)
	}
	if left := waitGone(append([]int{successor}, newWorkers...), 30*time.Second); len(left) > 0 {
		t.Errorf("processes of the new primary still running 30s after the deploy ended: %v", left)
	}
	if p.Exited() {
		t.Fatalf("old primary exited: %v\n%s", p.state, p.Tail(60))
	}
	if got := p.PIDFromFile(); got != old {
		t.Errorf("pid file holds %d, want the old primary %d", got, old)
	}
	st := p.waitStatus("the old primary's own workers, all ready", 30*time.Second, func(st runtime.Status) bool {
		return st.Primary.Pid == old && exactly(workers)(st)
	})
	for _, w := range st.Workers {
		if w.Generation == gen {
			t.Errorf("status: worker %+v runs the failed generation %d", w, gen)
		}
	}
	ws := p.waitSettled(old, 30*time.Second)
	bySlot := checkServedBy(t, answersAll(t, freshClient(2*time.Second), p.URL(), 60, workers), ws, workers)
	for slot, r := range bySlot {
		if r.Version != "v1" {
			t.Errorf("slot %d answers %q, want v1", slot, strings.TrimSpace(r.Body))
		}
	}
	// Requests keep being answered, and no more fail.
	checkLoadLost(t, load, maxLost, "on the new primary's worker")
	if _, err := os.Stat(p.PIDFile); err != nil {
		t.Errorf("pid file: %v", err)
	}
	p.shutdownAll(old)
}
