//go:build linux

package integration

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/internal/loadgen"
)

// startLoad runs 8 keep-alive and 8 new-connection clients against url
// until the test stops it (bounded by 2 minutes in any case).
func startLoad(t *testing.T, url string) *loadgen.Run {
	t.Helper()
	return startLoadVia(t, url, "")
}

// startLoadVia is startLoad, over the unix socket at unixSocket if that is
// not empty.
func startLoadVia(t *testing.T, url, unixSocket string) *loadgen.Run {
	t.Helper()
	return startLoadWith(t, loadgen.Config{URL: url, UnixSocket: unixSocket, KeepAlive: 8, NewConn: 8})
}

// startLoadWith runs cfg's clients until the test stops them, with
// startLoad's bounds, timeout and pause, and waits for their first 50
// answers. cfg names the URL and the clients.
func startLoadWith(t *testing.T, cfg loadgen.Config) *loadgen.Run {
	t.Helper()
	cfg.Duration, cfg.MaxRequests = 2*time.Minute, 3_000_000
	cfg.Timeout, cfg.Pause = 5*time.Second, 2*time.Millisecond
	r := loadgen.Start(context.Background(), cfg)
	t.Cleanup(func() { r.Stop() })
	waitRequests(t, r, 50, 10*time.Second)
	return r
}

// waitRequests waits until the run has completed at least n more requests.
func waitRequests(t *testing.T, r *loadgen.Run, n int64, d time.Duration) {
	t.Helper()
	start := r.Snapshot().Requests
	end := time.Now().Add(d)
	for r.Snapshot().Requests < start+n {
		if time.Now().After(end) {
			t.Fatalf("load: fewer than %d requests completed in %s: %s", n, d, r.Snapshot())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// checkLoad stops the load and fails the test on any failed request.
func checkLoad(t *testing.T, r *loadgen.Run, wantVersion string) loadgen.Result {
	t.Helper()
	res := r.Stop()
	t.Logf("load: %s", res)
	if res.Failures != 0 {
		t.Errorf("%d of %d requests failed under deploys: by kind %v; first errors %q",
			res.Failures, res.Requests, res.FailuresByKind, res.FirstErrors)
	}
	if wantVersion != "" && res.Versions[wantVersion] == 0 {
		t.Errorf("load never got an answer from %s: versions %v", wantVersion, res.Versions)
	}
	return res
}

// deployUnderLoad installs variant, deploys it and checks that it
// finished, that requests completed meanwhile and that only variant's
// version is served afterwards.
func deployUnderLoad(t *testing.T, p *Primary, load *loadgen.Run, variant, version string) Upgrade {
	t.Helper()
	before := load.Snapshot().Requests
	p.Install(variant)
	u := p.DeployOK(60 * time.Second)
	if after := load.Snapshot().Requests; after <= before {
		t.Errorf("generation %d: no request completed during the deploy", u.Gen)
	}
	p.WaitServing(p.URL(), version, 20*time.Second)
	return u
}

// TestDeployUnderLoad: three workers-only deploys under keep-alive and
// new-connection load lose no request, end with the last version served by
// every worker and keep the same primary.
func TestDeployUnderLoad(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{})
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	load := startLoad(t, p.URL())

	for _, v := range []string{"v2", "v3", "v4"} {
		u := deployUnderLoad(t, p, load, v, v)
		if k := u.Started.Str("kind"); k != "workers" {
			t.Errorf("generation %d: \"upgrade started\" kind = %q, want \"workers\": %s", u.Gen, k, u.Started.Raw)
		}
	}
	checkLoad(t, load, "v4")

	if p.Exited() {
		t.Errorf("primary %d exited", p.PID)
	}
	if got := p.PIDFromFile(); got != p.PID {
		t.Errorf("pid file holds %d, want the unchanged primary %d", got, p.PID)
	}
	if pids := p.PrimaryPIDs(); len(pids) != 1 || pids[0] != p.PID {
		t.Errorf("log shows primaries %v, want only %d", pids, p.PID)
	}
	events := p.Log.Events()
	checkPrimaryField(t, events, p.PID)
	checkInvariant(t, events, p.Workers)
}

// TestDeployNewPrimary: a deploy that also replaces the handoff binary
// hands the listeners to a new primary (pid file updated, old primary
// gone) without losing a request, and the new primary deploys too.
func TestDeployNewPrimary(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{})
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	old := p.PID
	load := startLoad(t, p.URL())

	p.InstallHandoff()
	u := deployUnderLoad(t, p, load, "v2", "v2")
	if k := u.Started.Str("kind"); k != "primary" {
		t.Errorf("generation %d: \"upgrade started\" kind = %q, want \"primary\": %s", u.Gen, k, u.Started.Raw)
	}

	var successor int
	end := time.Now().Add(30 * time.Second)
	for {
		successor = p.PIDFromFile()
		if successor > 0 && successor != old {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("pid file still holds %d, want a new primary's pid", successor)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !alive(successor) || !ours(successor, p.Mark, p.Dir) {
		t.Fatalf("pid file names %d, which is not a live primary of this test", successor)
	}
	if st := p.WaitExit(30 * time.Second); st == nil {
		t.Errorf("old primary %d still running 30s after the upgrade finished", old)
	} else {
		t.Logf("old primary %d: %s", old, st)
		// Only the new primary's private directory is left.
		if left := p.TmpEntries(); len(left) > 1 {
			t.Errorf("TMPDIR holds %v after the old primary exited, want only the new primary's directory", left)
		}
	}
	if _, ok := p.Log.Wait(u.Started.Seq, 5*time.Second, func(e Event) bool {
		return e.Msg == "primary ready" && e.Int0("primary") == successor
	}); !ok {
		t.Errorf("new primary %d logged no \"primary ready\"", successor)
	}

	// A further, workers-only deploy through the new primary.
	u2 := deployUnderLoad(t, p, load, "v3", "v3")
	if pid := u2.Started.Int0("primary"); pid != successor {
		t.Errorf("generation %d started by primary %d, want the new primary %d", u2.Gen, pid, successor)
	}
	if k := u2.Started.Str("kind"); k != "workers" {
		t.Errorf("generation %d: kind = %q, want \"workers\"", u2.Gen, k)
	}
	checkLoad(t, load, "v3")

	if got := p.PIDFromFile(); got != successor {
		t.Errorf("pid file holds %d after the second deploy, want %d", got, successor)
	}
	if !alive(successor) {
		t.Errorf("new primary %d is gone", successor)
	}
	events := p.Log.Events()
	checkPrimaryField(t, events, old, successor)
	checkInvariant(t, events, p.Workers)
}

// TestBadDeploysRefused: a build that crashes at start and one that never
// tells it is ready are refused with "upgrade aborted", the old version
// keeps serving without a failed request, and a good deploy then works.
// Each deploy runs under its own load, so a failure is pinned to one.
func TestBadDeploysRefused(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{Flags: []string{"--ready-timeout", "2s"}})
	p.WaitServing(p.URL(), "v1", 10*time.Second)

	t.Log("deploying the crash build")
	load := startLoad(t, p.URL())
	p.Install("crash")
	u := p.Deploy(30 * time.Second)
	if !u.Aborted() {
		t.Errorf("crash build: generation %d finished, want \"upgrade aborted\": %s", u.Gen, u.End.Raw)
	} else {
		if s := u.End.Str("stderr"); !strings.Contains(s, crashLine) {
			t.Errorf("crash build: \"upgrade aborted\" stderr = %q, want it to contain %q: %s", s, crashLine, u.End.Raw)
		}
		if s := u.End.Str("status"); s != "exit status 3" {
			t.Errorf("crash build: \"upgrade aborted\" status = %q, want \"exit status 3\"", s)
		}
		if u.End.Str("reason") == "" {
			t.Errorf("crash build: \"upgrade aborted\" has no reason: %s", u.End.Raw)
		}
	}
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	res := checkLoad(t, load, "v1")
	if n := res.Versions["vcrash"]; n != 0 {
		t.Errorf("%d requests answered by the crash build", n)
	}

	t.Log("deploying the noready build")
	load = startLoad(t, p.URL())
	p.Install("noready")
	u = p.Deploy(30 * time.Second)
	if !u.Aborted() {
		t.Errorf("noready build: generation %d finished, want \"upgrade aborted\": %s", u.Gen, u.End.Raw)
	} else if u.End.Str("reason") == "" {
		t.Errorf("noready build: \"upgrade aborted\" has no reason: %s", u.End.Raw)
	}
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	checkLoad(t, load, "v1")

	t.Log("deploying a good build")
	load = startLoad(t, p.URL())
	deployUnderLoad(t, p, load, "v2", "v2")
	checkLoad(t, load, "v2")

	if p.Exited() {
		t.Errorf("primary exited")
	}
	events := p.Log.Events()
	checkPrimaryField(t, events, p.PID)
	checkInvariant(t, events, p.Workers)
}
