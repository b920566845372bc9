//go:build linux

package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/internal/loadgen"
)

// TestReadyHTTPProbe: a server that binds at once and answers 503 (its
// /healthz too) for its first 1.5 s, under --ready http:/healthz, is
// deployed 3 times under new-connection load: no request fails (a 503
// counts as failed), because a worker gets traffic only once its own
// /healthz answered 2xx. Each probe reaches its worker and no other: the
// last probe status shows names the worker's own pid.
func TestReadyHTTPProbe(t *testing.T) {
	t.Parallel()
	needGroups(t)
	const warmup = 1500 * time.Millisecond
	p := StartPrimary(t, Options{Workers: 2, Ready: "http:/healthz", Args: []string{"--warmup", warmup.String()}})
	p.WaitServing(p.URL(), "v1", 20*time.Second)
	for _, w := range p.Status().Workers {
		pr := w.Probe
		if pr == nil || pr.Kind != "ready" || !pr.OK || !strings.Contains(pr.Result, fmt.Sprintf("pid=%d ", w.Pid)) {
			t.Errorf("worker %d (pid %d): last probe %+v; want a passed ready probe answered by that very worker", w.Slot, w.Pid, pr)
		}
	}
	load, _ := startNewConnLoad(t, p.URL())
	for _, v := range []string{"v2", "v3", "v4"} {
		mark := p.Log.Len()
		p.Install(v)
		u := p.Deploy(time.Minute)
		if u.Aborted() || u.RolledBack() {
			t.Fatalf("deploy of %s: %s\n%s", v, u.End.Raw, p.Tail(30))
		}
		for _, e := range p.Log.Events()[mark:] {
			if e.Msg != "worker ready" {
				continue
			}
			if took, err := time.ParseDuration(e.Str("took")); err != nil || took < warmup {
				t.Errorf("%s: worker ready after %s, before its warm-up of %s was over", v, e.Str("took"), warmup)
			}
		}
	}
	res := load.Stop()
	t.Logf("load: %s", res)
	if res.Failures != 0 {
		t.Errorf("%d of %d requests failed: %v %q", res.Failures, res.Requests, res.FailuresByKind, res.FirstErrors)
	}
	if res.Versions["v4"] == 0 {
		t.Errorf("versions served %v: v4 never answered", res.Versions)
	}
	checkInvariant(t, p.Log.Events(), p.Workers)
}

// TestReadyHTTPNeverReady: a version whose /healthz never answers 2xx is
// refused at --ready-timeout with the probe's last answer in the reason,
// and the old version keeps serving.
func TestReadyHTTPNeverReady(t *testing.T) {
	t.Parallel()
	needGroups(t)
	sickRefused(t, Options{Workers: 2, Ready: "http:/healthz", Flags: []string{"--ready-timeout", "3s"}},
		func(u Upgrade) bool { return u.End.Msg == "upgrade aborted" }, "not ready within 3s", "GET /healthz: 500 sick")
}

// TestHealthReplacesSickWorkers: a server whose /healthz starts failing
// 3 s after its start while / still answers, under --health http:/healthz:
// every such worker is replaced, start-new-then-retire, within 3 health
// intervals of turning sick, with no request failing and never fewer
// than 2 workers ready.
func TestHealthReplacesSickWorkers(t *testing.T) {
	t.Parallel()
	needGroups(t)
	const (
		sickAfter = 3 * time.Second
		interval  = 500 * time.Millisecond
	)
	p := StartPrimary(t, Options{Workers: 2, Args: []string{"--healthz-fail-after", sickAfter.String()},
		Flags: []string{"--health", "http:/healthz", "--health-interval", interval.String()}})
	p.WaitServing(p.URL(), "v1", 20*time.Second)
	load, _ := startNewConnLoad(t, p.URL())
	first := map[int]Event{} // the first workers, by pid
	for _, e := range p.Log.Filter("worker spawned") {
		first[e.Int0("pid")] = e
	}
	for pid, spawned := range first {
		gone, ok := p.Log.Wait(0, 30*time.Second, func(e Event) bool { return e.Msg == "worker exited" && e.Int0("pid") == pid })
		if !ok {
			t.Fatalf("worker %d, sick since %s after its start, was never replaced\n%s", pid, sickAfter, p.Tail(30))
		}
		sick, ok := p.Log.Wait(0, 0, func(e Event) bool { return e.Msg == "worker unhealthy" && e.Int0("pid") == pid })
		if !ok || sick.Seq > gone.Seq {
			t.Fatalf("worker %d exited (%s) without \"worker unhealthy\" before", pid, gone.Raw)
		}
		if r := sick.Str("result"); !strings.HasPrefix(r, "500 sick") {
			t.Errorf("worker unhealthy: result %q, want the 500 /healthz answered", r)
		}
		born, _ := spawned.Time()
		at, _ := sick.Time()
		exit, _ := gone.Time()
		after := at.Sub(born) - sickAfter
		t.Logf("worker %d: unhealthy %s after it turned sick, gone %s after", pid, after.Round(time.Millisecond),
			(exit.Sub(born) - sickAfter).Round(time.Millisecond))
		if after > 3*interval+time.Second {
			t.Errorf("worker %d found unhealthy %s after it turned sick: want within 3 intervals of %s", pid, after, interval)
		}
		if _, ok := p.Log.Wait(0, 0, func(e Event) bool {
			return e.Msg == "worker replacing" && e.Int0("pid") == pid && e.Str("reason") == "health"
		}); !ok {
			t.Errorf("worker %d: no \"worker replacing\" with reason health", pid)
		}
	}
	res := load.Stop()
	t.Logf("load: %s", res)
	if res.Failures != 0 {
		t.Errorf("%d of %d requests failed: %v %q", res.Failures, res.Requests, res.FailuresByKind, res.FirstErrors)
	}
	checkInvariant(t, p.Log.Events(), p.Workers)
}

// TestHealthFailsProbation: a new version that serves but fails its health
// checks within its probation fails the deploy, which rolls back: the old
// version serves again, no request failing.
func TestHealthFailsProbation(t *testing.T) {
	t.Parallel()
	needGroups(t)
	sickRefused(t, Options{Workers: 2, MinUptime: "10s",
		Flags: []string{"--health", "http:/healthz", "--health-interval", "300ms", "--health-threshold", "2"}},
		Upgrade.RolledBack, "failed its health checks", "500 sick")
}

// sickRefused deploys, under new-connection load, to a primary started
// with o, the version whose /healthz answers 500: the deploy must end as
// outcome says, with each of reasons in its reason; then v1 alone answers,
// and no request failed.
func sickRefused(t *testing.T, o Options, outcome func(Upgrade) bool, reasons ...string) {
	t.Helper()
	p := StartPrimary(t, o)
	p.WaitServing(p.URL(), "v1", 20*time.Second)
	load, _ := startNewConnLoad(t, p.URL())
	p.Install("sick")
	u := p.Deploy(time.Minute)
	if !outcome(u) {
		t.Fatalf("deploy of a version whose /healthz answers 500: %s", u.End.Raw)
	}
	for _, want := range reasons {
		if r := u.End.Str("reason"); !strings.Contains(r, want) {
			t.Errorf("reason %q: want it to say %q", r, want)
		}
	}
	oneVersionAfter(t, p, load, "v1")
}

// oneVersionAfter waits until version alone answers, then checks that no
// request of load failed.
func oneVersionAfter(t *testing.T, p *Primary, load *loadgen.Run, version string) {
	t.Helper()
	p.WaitServing(p.URL(), version, 20*time.Second)
	serveOnly(t, p, version, "after the refused deploy")
	res := load.Stop()
	t.Logf("load: %s", res)
	if res.Failures != 0 {
		t.Errorf("%d of %d requests failed: %v %q", res.Failures, res.Requests, res.FailuresByKind, res.FirstErrors)
	}
	checkInvariant(t, p.Log.Events(), p.Workers)
}
