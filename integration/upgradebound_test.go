//go:build linux

package integration

import (
	"syscall"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/runtime"
)

// TestSelfUpgradeBoundFollowsScale: a primary started with one worker and
// scaled to three bounds its self-upgrade by the three slots it has when
// the upgrade starts, (3+1) × --ready-timeout + 2 × --drain-timeout + 2 ×
// --min-uptime + 1 min, not by --workers; the upgrade, whose new workers are slow to get
// ready, hands all three slots over.
func TestSelfUpgradeBoundFollowsScale(t *testing.T) {
	t.Parallel()
	const (
		workers = 3
		ready   = 4 * time.Second
		drain   = 2 * time.Second
	)
	p := StartPrimary(t, Options{Workers: 1, Flags: []string{"--ready-timeout", ready.String(), "--drain-timeout", drain.String()},
		Args: []string{"--ready-after", "500ms"}})
	old := p.PID
	p.CtlOK("scale", "3")
	p.Workers = workers
	p.waitStatus("3 ready workers", 30*time.Second, exactly(workers))
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	load := startLoad(t, p.URL())

	p.InstallHandoff()
	u := deployUnderLoad(t, p, load, "slowready", "vslow")
	if k := u.Started.Str("kind"); k != "primary" {
		t.Fatalf("generation %d: kind %q, want \"primary\"", u.Gen, k)
	}
	minUptime, err := time.ParseDuration(harnessMinUptime)
	if err != nil {
		t.Fatal(err)
	}
	want := time.Duration(workers+1)*ready + 2*drain + 2*minUptime + time.Minute
	if got, ok := u.Started.Duration("timeout"); !ok || got != want {
		t.Errorf("\"upgrade started\" timeout %v (%v), want %s for %d slots: %s", got, ok, want, workers, u.Started.Raw)
	}
	successor := p.waitSuccessor(old, 30*time.Second)
	st := p.waitStatus("3 ready workers of the new primary", 30*time.Second, func(st runtime.Status) bool {
		return st.Primary.Pid == successor && exactly(workers)(st)
	})
	for _, w := range st.Workers {
		if w.Generation != u.Gen {
			t.Errorf("worker %+v: want generation %d", w, u.Gen)
		}
	}
	checkLoad(t, load, "vslow")
	p.shutdownAll(successor)
}

// TestLateNewPrimaryIsStoppedNotKilled: a new primary that is not ready
// within the self-upgrade's bound (here held stopped by the test after it
// took slot 0 over) is told to stop, not killed outright: it asks the old
// primary to take its slot back, which starts a worker for it before the
// new primary retires its own, so the pool never drops below N ready
// workers and no request fails; the new primary exits, the old one serves
// on with N workers, logs the deploy rolled back, and kills nothing.
func TestLateNewPrimaryIsStoppedNotKilled(t *testing.T) {
	t.Parallel()
	const (
		ready = 3 * time.Second
		drain = 2 * time.Second
	)
	p := StartPrimary(t, Options{MinUptime: "0s", Flags: []string{"--ready-timeout", ready.String(), "--drain-timeout", drain.String()}})
	old := p.PID
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	load := startLoad(t, p.URL())

	mark := p.Log.Len()
	p.InstallHandoff()
	p.Install("v2")
	p.Signal(old, syscall.SIGHUP)
	started := p.mustLog(mark, 10*time.Second, old, "upgrade started", nil)
	bound, ok := started.Duration("timeout")
	if !ok {
		t.Fatalf("\"upgrade started\" without a timeout: %s", started.Raw)
	}
	takingOver, ok := p.Log.Wait(mark, 30*time.Second, isMsg("taking over"))
	if !ok {
		t.Fatalf("no new primary logged \"taking over\"\n%s", p.Tail(40))
	}
	successor := takingOver.Int0("primary")
	p.mustLog(mark, 30*time.Second, old, "worker retiring", func(e Event) bool {
		return e.Str("reason") == "handed over" && e.Int0("slot") == 0
	})
	p.Signal(successor, syscall.SIGSTOP)
	p.mustLog(mark, bound+30*time.Second, old, "the new primary is not ready in time, stopping it", nil)
	p.Signal(successor, syscall.SIGCONT)

	p.mustLog(mark, 30*time.Second, old, "rolling back a failed hand-over", nil)
	p.mustLog(mark, 60*time.Second, old, "upgrade rolled back", func(e Event) bool { return e.Int0("generation") == started.Int0("generation") })
	if left := waitGone([]int{successor}, 30*time.Second); len(left) > 0 {
		t.Fatalf("new primary %d still running after it was told to stop", successor)
	}
	for _, e := range p.Log.Events()[mark:] {
		if e.Msg == "the new primary is not ready in time, killing it" || e.Msg == "reclaiming slots from the failed new primary" {
			t.Errorf("the late new primary was killed: %s", e.Raw)
		}
	}
	p.waitSettled(old, 20*time.Second)
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	checkLoad(t, load, "v1")
	checkInvariant(t, p.Log.Events(), p.Workers)
	p.shutdownAll(old)
}
