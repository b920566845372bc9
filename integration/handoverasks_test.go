//go:build linux

package integration

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/runtime"
)

// beginSelfUpgrade installs a fresh handoff binary (and variant), sends
// HUP to the primary old and waits until the new primary has n workers of
// the upgrade's generation ready. It returns the generation and the new
// primary's pid.
func (p *Primary) beginSelfUpgrade(old int, variant string, n int, d time.Duration) (gen, successor int) {
	p.t.Helper()
	mark := p.Log.Len()
	p.InstallHandoff()
	p.Install(variant)
	p.Signal(old, syscall.SIGHUP)
	st, ok := p.logged(mark, d, old, "upgrade started", nil)
	if !ok {
		p.t.Fatalf("primary %d logged no \"upgrade started\"\n%s", old, p.Tail(40))
	}
	gen = st.Int0("generation")
	if k := st.Str("kind"); k != "primary" {
		p.t.Fatalf("generation %d: kind %q, want \"primary\"", gen, k)
	}
	ready := map[int]bool{}
	end := time.Now().Add(d)
	from := st.Seq
	for len(ready) < n {
		ev, ok := p.Log.Wait(from, time.Until(end), func(e Event) bool {
			return e.Msg == "worker ready" && e.Int0("generation") == gen && e.Int0("primary") != old
		})
		if !ok {
			p.t.Fatalf("the new primary has %d of %d workers of generation %d ready after %s\n%s", len(ready), n, gen, d, p.Tail(60))
		}
		ready[ev.Int0("pid")] = true
		successor, from = ev.Int0("primary"), ev.Seq+1
	}
	return gen, successor
}

// TestDeployDuringHandOverProbation: a HUP sent to the old primary (the pid
// file still names it) while the new primary's last worker is in its
// probation ends that probation, as docs/deploys.md says of any deploy asked
// for during one: the new primary takes over at once, not after
// --min-uptime, and deploys the newer build next, once; no request fails.
func TestDeployDuringHandOverProbation(t *testing.T) {
	t.Parallel()
	const probation = 30 * time.Second
	p := StartPrimary(t, Options{MinUptime: probation.String()})
	old := p.PID
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	load := startLoad(t, p.URL())

	gen, successor := p.beginSelfUpgrade(old, "v2", p.Workers, 60*time.Second)
	if got := p.PIDFromFile(); got != old {
		t.Fatalf("pid file holds %d during the hand-over's probation, want the old primary %d", got, old)
	}
	mark := p.Log.Len()
	asked := time.Now()
	p.Install("v3")
	p.Signal(old, syscall.SIGHUP)

	fin := p.mustLog(mark, probation, successor, "upgrade finished", func(e Event) bool { return e.Int0("generation") == gen })
	if took := time.Since(asked); took > probation/2 {
		t.Errorf("the new primary took over %s after the deploy was asked for, want its probation (%s) ended at once", took, probation)
	}
	next := p.mustLog(fin.Seq, 30*time.Second, successor, "upgrade started", nil)
	if g := next.Int0("generation"); g != gen+1 {
		t.Errorf("the new primary's next deploy is generation %d, want %d: %s", g, gen+1, next.Raw)
	}
	p.WaitServing(p.URL(), "v3", 30*time.Second)
	// Its own probation runs out: it was asked for once, and runs once.
	p.mustLog(next.Seq, 2*probation, successor, "upgrade finished", func(e Event) bool { return e.Int0("generation") == gen+1 })
	for _, e := range p.Log.Filter("upgrade started") {
		if e.Int0("generation") > gen+1 {
			t.Errorf("one deploy asked for, a second one started: %s", e.Raw)
		}
	}
	if st := p.WaitExit(30 * time.Second); st == nil || st.ExitCode() != 0 {
		t.Errorf("old primary %d after handing over: %v, want exit status 0", old, st)
	}
	checkLoad(t, load, "v3")
	p.shutdownAll(successor)
}

// TestSignalsAroundHandOverPassOn: a TTIN sent to the old primary during a
// self-upgrade is queued there and, at the hand-over, passed on to the new
// primary, which scales to three workers; a TERM that reaches the old
// primary after it handed over (its workers still draining) stops the new
// primary too: every process of the test ends, the pid file goes.
func TestSignalsAroundHandOverPassOn(t *testing.T) {
	t.Parallel()
	// The old workers drain for a while after the hand-over: the old
	// primary waits for them.
	p := StartPrimary(t, Options{MinUptime: "2s", Args: []string{"--chatter", "1s", "--chatter-drain", "15s"},
		Flags: []string{"--drain-timeout", "30s"}})
	old := p.PID
	p.WaitServing(p.URL(), "v1", 10*time.Second)

	_, successor := p.beginSelfUpgrade(old, "v2", 1, 60*time.Second)
	p.Signal(old, syscall.SIGTTIN)
	p.mustLog(0, 60*time.Second, old, "handed over", nil)
	p.Workers = 3
	p.waitStatus("3 ready workers of the new primary", 30*time.Second, func(st runtime.Status) bool {
		return st.Primary.Pid == successor && exactly(3)(st)
	})

	if p.Exited() {
		t.Fatalf("old primary %d has exited already: its workers did not drain long enough for the test", old)
	}
	mark := p.Log.Len()
	p.Signal(old, syscall.SIGTERM)
	p.mustLog(mark, 10*time.Second, successor, "shutdown started", nil)
	if left := waitGone([]int{old, successor}, 60*time.Second); len(left) > 0 {
		t.Fatalf("primaries %v still running 60s after TERM to the old one\n%s", left, p.Tail(40))
	}
	if st := p.WaitExit(5 * time.Second); st == nil || st.ExitCode() != 0 {
		t.Errorf("old primary %d: %v, want exit status 0", old, st)
	}
	if left := waitGone(markedPIDs(p.Mark), 10*time.Second); len(left) > 0 {
		t.Errorf("processes of the test left: %v", left)
	}
	if pid := p.PIDFromFile(); pid != 0 {
		t.Errorf("pid file still names %d", pid)
	}
}

// TestNewPrimaryCannotWritePIDFile: the pid file cannot be written as
// the new primary takes over (its path has become a directory): the new
// primary does not carry on beside the old one. It logs why in one line,
// hands its slots back, and exits non-zero; the old primary, still named
// in the pid file, rolls the slots back and serves alone, with no worker
// of the new primary left and no request failed.
func TestNewPrimaryCannotWritePIDFile(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{MinUptime: "3s"})
	old := p.PID
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	load := startLoad(t, p.URL())

	mark := p.Log.Len()
	gen, successor := p.beginSelfUpgrade(old, "v2", p.Workers, 60*time.Second)
	// During the new primary's probation, before it writes the pid file.
	if err := os.Remove(p.PIDFile); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(p.PIDFile, "in-the-way"), 0o755); err != nil {
		t.Fatal(err)
	}
	end := p.mustLog(mark, 60*time.Second, old, "upgrade rolled back", func(e Event) bool { return e.Int0("generation") == gen })
	if r := end.Str("reason"); !strings.Contains(r, "exit status 1") {
		t.Errorf("\"upgrade rolled back\" reason %q, want the new primary's exit status 1", r)
	}
	abort := p.mustLog(mark, time.Second, successor, "upgrade aborted", nil)
	if r := abort.Str("reason"); !strings.Contains(r, "--pid-file "+p.PIDFile) {
		t.Errorf("the new primary's \"upgrade aborted\" reason %q, want it to name --pid-file %s", r, p.PIDFile)
	}
	for _, e := range p.Log.Events()[mark:] {
		if e.Int0("primary") == successor && (e.Msg == "primary ready" || e.Msg == "upgrade finished") {
			t.Errorf("the new primary carried on: %s", e.Raw)
		}
	}
	if left := waitGone([]int{successor}, 10*time.Second); len(left) > 0 {
		t.Fatalf("new primary %d still running after its take-over failed", successor)
	}
	p.waitSettled(old, 20*time.Second)
	st := p.waitStatus("the old primary's 2 ready workers", 10*time.Second, exactly(p.Workers))
	if st.Primary.Pid != old {
		t.Errorf("status answered by %d, want the old primary %d", st.Primary.Pid, old)
	}
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	checkLoad(t, load, "v1")
	if err := os.RemoveAll(p.PIDFile); err != nil {
		t.Fatal(err)
	}
	p.shutdownAll(old)
}
