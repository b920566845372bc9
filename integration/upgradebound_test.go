//go:build linux

package integration

import (
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
