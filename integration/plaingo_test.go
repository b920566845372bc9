//go:build linux

package integration

import (
	"testing"
	"time"

	"github.com/handoff-dev/handoff/internal/loadgen"
	"github.com/handoff-dev/handoff/internal/steer"
	"github.com/handoff-dev/handoff/internal/testutil"
)

// The ordinary Go server (integration/plaingo): ListenAndServe on
// ":"+$PORT and, on SIGTERM, Shutdown, nothing more. On a socket every
// worker shares it loses requests in every deploy: a retiring worker
// accepts new connections until the moment it stops, and Go drops a
// connection whose first request it reads after Shutdown began. With a
// socket per worker, handoff steers new connections away from a worker and
// waits until its accept queue is empty before it signals it.

// needGroups skips the test where this kernel cannot steer a SO_REUSEPORT
// group at all (handoff then serves from one shared socket), except under
// CI (testutil.Need).
func needGroups(t *testing.T) {
	t.Helper()
	if mode, reason := steer.Detect(); mode == steer.Shared {
		testutil.Need(t, "no steered SO_REUSEPORT group here: %s", reason)
	}
}

// checkBalanced fails the test unless the primary said at start how it
// balances (one "balancing" event, with "mode" and "reason"), status
// --json names the same mode as "balance", and that mode is not "shared".
func checkBalanced(t *testing.T, p *Primary) {
	t.Helper()
	ev, ok := p.Log.Wait(0, 5*time.Second, isMsg("balancing"))
	if !ok {
		t.Errorf("no \"balancing\" event at start")
	} else {
		t.Logf("balancing: mode %q, reason %q", ev.Str("mode"), ev.Str("reason"))
		if ev.Str("mode") == "shared" || ev.Str("reason") == "" {
			t.Errorf("balancing: want a steered mode, with its reason: %s", ev.Raw)
		}
	}
	if n := len(p.Log.Filter("balancing")); n > 1 {
		t.Errorf("%d \"balancing\" events, want one", n)
	}
	mode := p.Status().Balance
	switch {
	case mode == "":
		t.Errorf("status --json has no \"balance\"")
	case mode == "shared":
		t.Errorf("status --json: balance %q, want a steered mode", mode)
	case ok && mode != ev.Str("mode"):
		t.Errorf("status --json: balance %q, the start said %q", mode, ev.Str("mode"))
	}
}

// plainGoDeploys runs 2 workers of plaingo under handoff run's defaults
// (balance, --adopt-bind auto) with --ready bind, under 16 clients of the
// given kind (new connection per request, or keep-alive), and deploys v2,
// v1, ... deploys times, each until the new version alone answers on both
// workers. It returns the load's totals and the version deployed last.
func plainGoDeploys(t *testing.T, keepAlive bool, deploys int) (*Primary, loadgen.Result, string) {
	t.Helper()
	needAdoption(t)
	p := StartPrimary(t, Options{Server: "plain-v1", Ready: "bind", Workers: 2})
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	cfg := loadgen.Config{URL: p.URL(), NewConn: 16}
	if keepAlive {
		cfg = loadgen.Config{URL: p.URL(), KeepAlive: 16}
	}
	load := startLoadWith(t, cfg)
	v := "v1"
	for i := range deploys {
		v = []string{"v2", "v1"}[i%2]
		deployUnderLoad(t, p, load, "plain-"+v, v)
		waitRequests(t, load, 100, 10*time.Second)
	}
	res := load.Stop()
	t.Logf("load over %d deploys: %s", deploys, res)
	return p, res, v
}

// TestPlainGoServerDeploys: the plain Go server, deployed 6 times under
// new-connection load with handoff's default balance, which is steered
// (not shared) wherever groups work: no request fails, and both versions
// answered.
func TestPlainGoServerDeploys(t *testing.T) {
	t.Parallel()
	needGroups(t)
	p, res, _ := plainGoDeploys(t, false, 6)
	checkBalanced(t, p)
	if res.Failures != 0 {
		t.Errorf("%d of %d requests failed over the deploys: by kind %v; first errors %q",
			res.Failures, res.Requests, res.FailuresByKind, res.FirstErrors)
	}
	if res.Versions["v1"] == 0 || res.Versions["v2"] == 0 {
		t.Errorf("versions answered %v, want v1 and v2", res.Versions)
	}
	checkInvariant(t, p.Log.Events(), p.Workers)
}

// TestPlainGoServerDeploysKeepAlive: the same under keep-alive load. Go's
// Shutdown closes the connections it believes idle at once, racing a
// client that is sending its next request on one: the server's own race,
// which no process manager can close (integration/bindserver and
// internal/drain show the drain that does). So what is lost is reported,
// not judged; the primary serves on and the last version answers.
func TestPlainGoServerDeploysKeepAlive(t *testing.T) {
	t.Parallel()
	p, res, last := plainGoDeploys(t, true, 5)
	if res.Failures > 0 {
		t.Logf("%d of %d keep-alive requests failed over 5 deploys (by kind %v; first errors %q): "+
			"Shutdown closed keep-alive connections it took for idle while their clients were sending on them",
			res.Failures, res.Requests, res.FailuresByKind, res.FirstErrors)
	}
	if p.Exited() {
		t.Fatalf("primary %d exited", p.PID)
	}
	p.WaitServing(p.URL(), last, 10*time.Second)
}
