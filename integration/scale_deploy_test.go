//go:build linux

package integration

import (
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/internal/loadgen"
	"github.com/handoff-dev/handoff/runtime"
)

// scaleDeltas returns the size changes ("scale finished": to - from) that
// primary pid logged from index from on, sorted, waiting up to d until
// there are n.
func (p *Primary) scaleDeltas(from int, pid int, n int, d time.Duration) []int {
	p.t.Helper()
	end := time.Now().Add(d)
	for {
		var deltas []int
		for _, e := range p.Log.Events()[from:] {
			if e.Msg == "scale finished" && e.Int0("primary") == pid {
				deltas = append(deltas, e.Int0("to")-e.Int0("from"))
			}
		}
		if len(deltas) >= n || time.Now().After(end) {
			slices.Sort(deltas)
			return deltas
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkScaledTo waits until primary pid has exactly n ready workers, all of
// generation gen, and that only version is served by all n.
func (p *Primary) checkScaledTo(pid, n, gen int, version string) {
	p.t.Helper()
	st := p.waitStatus("scaled and ready", 60*time.Second, func(st runtime.Status) bool {
		return st.Primary.Pid == pid && exactly(n)(st)
	})
	for _, w := range st.Workers {
		if w.Generation != gen {
			p.t.Errorf("status: worker %+v, want generation %d", w, gen)
		}
	}
	p.Workers = n
	p.WaitServing(p.URL(), version, 20*time.Second)
	p.waitSettled(pid, 20*time.Second)
}

// TestScaleDuringDeploy: `handoff scale +2`, a TTIN and a TTOU arrive while
// a rolling deploy runs, under load. Each is done once the deploy has
// finished, in turn: 2 workers become 4, all of the new generation, and no
// request fails.
func TestScaleDuringDeploy(t *testing.T) {
	t.Parallel()
	p, load := servingUnderLoad(t, Options{Workers: 2})
	mark, started := p.beginDeploy("slowready", false)
	gen := started.Int0("generation")
	p.mustLog(mark, 20*time.Second, p.PID, "worker spawned", func(e Event) bool { return e.Int0("generation") == gen })
	scaled := make(chan ctlResult, 1)
	go func() { scaled <- p.Ctl("scale", "+2") }()
	p.Signal(p.PID, syscall.SIGTTIN)
	p.Signal(p.PID, syscall.SIGTTOU)
	u := p.AwaitUpgrade(mark, 60*time.Second)
	if u.Aborted() {
		t.Fatalf("generation %d: %s\n%s", gen, u.End.Raw, p.Tail(60))
	}
	if r := <-scaled; r.code != 0 {
		t.Errorf("handoff scale +2 during the deploy: %s", r)
	}
	if got := p.scaleDeltas(mark, p.PID, 3, 60*time.Second); !slices.Equal(got, []int{-1, 1, 2}) {
		t.Errorf("scales done: %v, want -1, +1 and +2\n%s", got, p.Tail(40))
	}
	for _, e := range p.Log.Filter("scale started") {
		if e.Seq < u.End.Seq {
			t.Errorf("a scale began during the deploy: %s", e.Raw)
		}
	}
	p.checkScaledTo(p.PID, 4, gen, "vslow")
	checkLoad(t, load, "vslow")
	checkInvariant(t, p.Log.Events(), 2)
	p.shutdownAll(p.PID)
}

// TestScaleDuringHandOver: `handoff scale +2` asked of the old primary while
// it hands over to a new one, under load: the request waits for the
// hand-over, is passed to the new primary, which ends with 4 workers of
// the new generation; no request fails.
func TestScaleDuringHandOver(t *testing.T) {
	t.Parallel()
	p, load := servingUnderLoad(t, Options{Workers: 2})
	old := p.PID
	mark, _ := p.beginDeploy("slowready", true)
	step := p.waitNewPrimaryStep(mark, old)
	scaled := make(chan ctlResult, 1)
	go func() { scaled <- p.Ctl("scale", "+2") }()
	u := p.AwaitUpgrade(mark, 60*time.Second)
	if u.Aborted() {
		t.Fatalf("generation %d: %s\n%s", u.Gen, u.End.Raw, p.Tail(60))
	}
	successor := p.waitSuccessor(old, 30*time.Second)
	if successor != step.Int0("primary") {
		t.Errorf("pid file names %d, the new primary was %d", successor, step.Int0("primary"))
	}
	if r := <-scaled; r.code != 0 {
		t.Errorf("handoff scale +2 during the hand-over: %s", r)
	}
	if got := p.scaleDeltas(mark, successor, 1, 60*time.Second); !slices.Equal(got, []int{2}) {
		t.Errorf("scales the new primary did: %v, want +2\n%s", got, p.Tail(40))
	}
	p.checkScaledTo(successor, 4, u.Gen, "vslow")
	if st := p.WaitExit(30 * time.Second); st == nil || st.ExitCode() != 0 {
		t.Errorf("old primary %d after handing over: %v, want exit status 0", old, st)
	}
	checkLoad(t, load, "vslow")
	checkInvariant(t, p.Log.Events(), 2)
	p.shutdownAll(successor)
}

// servingUnderLoad starts a primary with o, waits until all its workers
// serve v1, and starts the load on it.
func servingUnderLoad(t *testing.T, o Options) (*Primary, *loadgen.Run) {
	t.Helper()
	p := StartPrimary(t, o)
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	return p, startLoad(t, p.URL())
}

// beginDeploy installs variant (and, with self, a new handoff binary: a
// self-upgrade), sends SIGHUP to the current primary and waits until it
// logs "upgrade started". It returns the log's length before the signal
// and that event.
func (p *Primary) beginDeploy(variant string, self bool) (int, Event) {
	p.t.Helper()
	if self {
		p.InstallHandoff()
	}
	p.Install(variant)
	mark, pid := p.Log.Len(), p.Current()
	p.Signal(pid, syscall.SIGHUP)
	return mark, p.mustLog(mark, 10*time.Second, pid, "upgrade started", nil)
}

// waitNewPrimaryStep waits for the first roll step of a new primary (one
// other than old) from index mark on: the hand-over is under way.
func (p *Primary) waitNewPrimaryStep(mark, old int) Event {
	p.t.Helper()
	ev, ok := p.Log.Wait(mark, 60*time.Second, func(e Event) bool {
		return e.Msg == "upgrade step" && e.Int0("primary") != old
	})
	if !ok {
		p.t.Fatalf("no step of a new primary\n%s", p.Tail(40))
	}
	return ev
}
