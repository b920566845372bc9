//go:build linux

package integration

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// libDeploy installs variant over the library program, sends SIGHUP, and
// checks that the primary upgraded itself: kind "primary", a new live
// primary in the pid file, and only version served afterwards. It returns
// the new primary's pid.
func libDeploy(t *testing.T, p *Primary, variant, version string) int {
	t.Helper()
	old := p.Current()
	p.InstallLib(variant)
	u := p.DeployOK(60 * time.Second)
	if k := u.Started.Str("kind"); k != "primary" {
		t.Errorf("generation %d: kind %q, want \"primary\" (the program's own binary changed): %s", u.Gen, k, u.Started.Raw)
	}
	pid := p.waitSuccessor(old, 30*time.Second)
	p.WaitServing(p.URL(), version, 20*time.Second)
	if left := waitGone([]int{old}, 30*time.Second); len(left) > 0 {
		t.Errorf("old primary %d still running after handing over", old)
	}
	return pid
}

// TestExampleHello: examples/hello, a library-mode program, deploys a
// rebuilt binary of itself on SIGHUP: under keep-alive and new-connection
// load, three upgrades fail no request, the primary's pid changes each
// time, the last version is served, a bad build (exits at start) is
// refused, and at every event N workers were ready and at most N+1
// running.
func TestExampleHello(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{Lib: "hello-v1"})
	p.WaitServing(p.URL(), "v1", 20*time.Second)
	load := startLoad(t, p.URL())
	primaries := map[int]bool{p.PID: true}
	for _, v := range []string{"v2", "v1", "v2"} {
		before := load.Snapshot().Requests
		pid := libDeploy(t, p, "hello-"+v, v)
		if primaries[pid] {
			t.Errorf("deploy of %s: primary %d again, want a new one", v, pid)
		}
		primaries[pid] = true
		waitRequests(t, load, 300, 20*time.Second)
		if load.Snapshot().Requests <= before {
			t.Errorf("no request completed across the deploy of %s", v)
		}
		noFailuresSoFar(t, load, "after the deploy of "+v)
	}
	// A bad build, one that exits at start, is refused: the primary that
	// serves stays, and so does v2.
	cur := p.Current()
	if err := copyFile(servers["crash"], p.Bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if u := p.Deploy(60 * time.Second); !u.Aborted() {
		t.Errorf("a build that exits at start was deployed: %s", u.End.Raw)
	}
	if got := p.Current(); got != cur {
		t.Errorf("after a refused deploy the primary is %d, want still %d", got, cur)
	}
	p.WaitServing(p.URL(), "v2", 20*time.Second)
	waitRequests(t, load, 300, 20*time.Second)
	checkLoad(t, load, "v2")
	if alive(p.PID) {
		t.Errorf("the first primary %d is still running", p.PID)
	}
	checkInvariant(t, p.Log.Events(), p.Workers)
	p.shutdownAll(p.Current())
}

// TestLibraryMessages: in library mode, messages go worker→primary (and the
// answer back to that very worker), primary→worker by slot and by
// broadcast, before, during and after upgrades of the primary, with every
// /ask answered; bad builds (workers that exit at start; a binary that
// exits at start) are refused with no failed request.
func TestLibraryMessages(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{Lib: "libapp-v1"})
	p.WaitServing(p.URL(), "v1", 20*time.Second)
	load := startLoad(t, p.URL())

	// Asks on new and on kept-alive connections, until stopped.
	var asks, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		c := freshClient(10 * time.Second)
		if i%2 == 1 {
			c = &http.Client{Timeout: 10 * time.Second}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < 100000; n++ {
				select {
				case <-stop:
					return
				default:
				}
				status, body, err := get(c, p.URL()+"ask")
				asks.Add(1)
				if err != nil || status != 200 || !strings.HasPrefix(body, "answer primary=") {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("%d %q %v", status, body, err))
				}
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	stopAsks := func() {
		close(stop)
		wg.Wait()
	}
	defer func() {
		select {
		case <-stop:
		default:
			stopAsks()
		}
	}()
	waitFor := func(n int64) {
		start := asks.Load()
		end := time.Now().Add(20 * time.Second)
		for asks.Load() < start+n && time.Now().Before(end) {
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitFor(50)
	libDeploy(t, p, "libapp-v2", "v2")
	waitFor(50)
	libDeploy(t, p, "libapp-v1", "v1")
	waitFor(50)

	// A build whose workers exit at start: the new primary starts, its
	// first worker fails, the deploy is refused and v1 keeps serving.
	cur := p.Current()
	p.InstallLib("libapp-crash")
	if u := p.Deploy(60 * time.Second); !u.Aborted() {
		t.Errorf("a build whose workers crash was deployed: %s", u.End.Raw)
	}
	// A binary that exits at start (not even a primary).
	if err := copyFile(servers["crash"], p.Bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if u := p.Deploy(60 * time.Second); !u.Aborted() {
		t.Errorf("a binary that exits at start was deployed: %s", u.End.Raw)
	}
	if got := p.Current(); got != cur {
		t.Errorf("after refused deploys the primary is %d, want still %d", got, cur)
	}
	p.WaitServing(p.URL(), "v1", 20*time.Second)
	waitFor(50)
	stopAsks()
	checkLoad(t, load, "v1")
	if n, f := asks.Load(), failed.Load(); f != 0 || n < 200 {
		t.Errorf("asks: %d failed of %d (want 0 of at least 200); first: %v", f, n, firstErr.Load())
	}

	// Every worker of the current primary got broadcasts and messages for
	// its own slot only, and answers named it.
	c := freshClient(2 * time.Second)
	seen := map[int]string{}
	for i := 0; i < 200 && len(seen) < p.Workers; i++ {
		status, body, err := get(c, p.URL()+"stats")
		if err != nil || status != 200 {
			t.Fatalf("/stats: %d %q %v", status, body, err)
		}
		var ticks, directs, mismatches, pid int
		fmt.Sscanf(body, "ticks=%d directs=%d mismatches=%d pid=%d", &ticks, &directs, &mismatches, &pid)
		seen[pid] = body
		if ticks == 0 || directs == 0 || mismatches != 0 {
			t.Errorf("worker %d: %s (want ticks and directs, no mismatch)", pid, strings.TrimSpace(body))
		}
	}
	if len(seen) < p.Workers {
		t.Errorf("/stats reached workers %v, want %d", seen, p.Workers)
	}
	statuses := 0
	for _, e := range p.Log.Filter("worker status") {
		if e.Str("status") == "libapp v1 serving" {
			statuses++
		}
	}
	if statuses < p.Workers {
		t.Errorf("%d \"worker status\" events with Worker.Notify's STATUS, want at least %d", statuses, p.Workers)
	}
	checkInvariant(t, p.Log.Events(), p.Workers)
	p.shutdownAll(p.Current())
}

// TestLibraryWorkerUnderHandoffRun: a library-mode program run as the
// worker command of `handoff run` takes the worker side (HANDOFF_WORKER is
// set), says READY=1, and deploys with no failed request.
func TestLibraryWorkerUnderHandoffRun(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{Server: "libapp-v1"})
	p.WaitServing(p.URL(), "v1", 20*time.Second)
	load := startLoad(t, p.URL())
	deployUnderLoad(t, p, load, "libapp-v2", "v2")
	checkLoad(t, load, "v2")
	checkInvariant(t, p.Log.Events(), p.Workers)
}
