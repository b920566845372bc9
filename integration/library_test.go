//go:build linux

package integration

import (
	"fmt"
	"net/http"
	"slices"
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

// appPrimarySpans returns, per primary pid, the log positions of its
// "app primary started" and "app primary ended" (-1 when absent).
func appPrimarySpans(events []Event) map[int][2]int {
	spans := map[int][2]int{}
	for i, e := range events {
		pid := e.Int0("primary")
		s, ok := spans[pid]
		if !ok {
			s = [2]int{-1, -1}
		}
		switch e.Msg {
		case "app primary started":
			s[0] = i
		case "app primary ended":
			s[1] = i
		default:
			continue
		}
		spans[pid] = s
	}
	return spans
}

// TestLibraryCallbackPanics: in library mode, App.Primary runs in one
// primary at a time: across self-upgrades the old primary's ends (at the
// hand-over) before the new one's starts. A panic in App.OnMessage or
// App.Primary is logged with its stack and kills neither the primary nor
// a worker: no request fails, messages are still answered, and a further
// self-upgrade works.
func TestLibraryCallbackPanics(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{Lib: "libapp-v1"})
	p.WaitServing(p.URL(), "v1", 20*time.Second)
	load := startLoad(t, p.URL())

	first := p.PID
	second := libDeploy(t, p, "libapp-v2", "v2")
	third := libDeploy(t, p, "libapp-v1", "v1")
	p.mustLog(0, 10*time.Second, third, "app primary started", nil)
	spans := appPrimarySpans(p.Log.Events())
	for _, pair := range [][2]int{{first, second}, {second, third}} {
		old, next := spans[pair[0]], spans[pair[1]]
		if old[0] < 0 || old[1] < 0 || next[0] < 0 {
			t.Fatalf("App.Primary markers of primaries %d %v and %d %v missing\n%s", pair[0], old, pair[1], next, p.Tail(80))
		}
		if next[0] < old[1] {
			t.Errorf("App.Primary of primary %d started (event %d) before that of primary %d ended (event %d)",
				pair[1], next[0], pair[0], old[1])
		}
	}

	// Panics in the serving primary's callbacks.
	workers := p.waitSettled(third, 20*time.Second)
	mark := p.Log.Len()
	c := freshClient(5 * time.Second)
	for _, in := range []string{"onmessage", "onmessage", "primary", "onmessage"} {
		if status, body, err := get(c, p.URL()+"panic?in="+in); err != nil || status != 200 {
			t.Fatalf("/panic?in=%s: %d %q %v", in, status, body, err)
		}
	}
	for _, cb := range []string{"OnMessage", "Primary"} {
		ev := p.mustLog(mark, 10*time.Second, third, "callback panicked", func(e Event) bool { return e.Str("callback") == cb })
		if !strings.Contains(ev.Str("stack"), "main.main") || !strings.Contains(ev.Str("panic"), "asked to panic") {
			t.Errorf("\"callback panicked\" of %s without the panic and its stack: %s", cb, ev.Raw)
		}
	}
	p.mustLog(mark, 10*time.Second, third, "app primary ended", nil)
	// The primary and its workers serve on; OnMessage still answers.
	for i := 0; i < 20; i++ {
		if status, body, err := get(c, p.URL()+"ask"); err != nil || status != 200 || !strings.HasPrefix(body, "answer primary=") {
			t.Fatalf("/ask after the panics: %d %q %v", status, body, err)
		}
	}
	waitRequests(t, load, 200, 20*time.Second)
	if !alive(third) {
		t.Fatalf("primary %d died", third)
	}
	if got := p.waitSettled(third, 10*time.Second); !slices.Equal(got, workers) {
		t.Errorf("workers %v after the panics, want the same %v", got, workers)
	}
	if ex := p.Log.Filter("worker exited"); len(ex) > 0 && ex[len(ex)-1].Seq >= mark {
		t.Errorf("a worker exited after the panics: %s", ex[len(ex)-1].Raw)
	}

	// A self-upgrade after App.Primary panicked: the next one's starts.
	fourth := libDeploy(t, p, "libapp-v2", "v2")
	p.mustLog(0, 10*time.Second, fourth, "app primary started", nil)
	checkLoad(t, load, "v2")
	checkInvariant(t, p.Log.Events(), p.Workers)
	p.shutdownAll(fourth)
}
