//go:build linux

package integration

import (
	"bufio"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// MetricsURL is http://ADDR of the --metrics listener, from the first
// "metrics listening" event.
func (p *Primary) MetricsURL() string {
	p.t.Helper()
	ev, ok := p.Log.Wait(0, 10*time.Second, isMsg("metrics listening"))
	if !ok || ev.Str("addr") == "" {
		p.t.Fatalf("no \"metrics listening\" event with an addr\n%s", p.Tail(40))
	}
	return "http://" + ev.Str("addr")
}

// scrape reads /metrics into series -> value ("name{labels}" as exposed,
// labels in the order the exposition writes them).
func scrape(t *testing.T, base string) map[string]float64 {
	t.Helper()
	status, body, err := get(freshClient(5*time.Second), base+"/metrics")
	if err != nil || status != 200 {
		t.Fatalf("GET %s/metrics: %d %v", base, status, err)
	}
	return parseExposition(body)
}

func parseExposition(body string) map[string]float64 {
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

// waitMetric polls /metrics until series satisfies ok, and fails the test
// after d with what it last saw.
func waitMetric(t *testing.T, base, series string, d time.Duration, ok func(float64) bool) float64 {
	t.Helper()
	end := time.Now().Add(d)
	for {
		m := scrape(t, base)
		v, has := m[series]
		if has && ok(v) {
			return v
		}
		if time.Now().After(end) {
			t.Fatalf("%s: %v (present %v) after %s", series, v, has, d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func eq(want float64) func(float64) bool { return func(v float64) bool { return v == want } }

// probe returns the status and body of base+path on a new connection.
func probe(t *testing.T, base, path string) (int, string) {
	t.Helper()
	status, body, err := get(freshClient(5*time.Second), base+path)
	if err != nil {
		t.Fatalf("GET %s%s: %v", base, path, err)
	}
	return status, body
}

// TestMetrics: --metrics serves the handoff_ metrics, /healthz and /readyz;
// the counters follow worker crashes and deploys; per-slot RSS is there; the
// workers never get the metrics socket; and across a self-upgrade the
// socket keeps answering (no failed scrape) and the new primary serves it.
func TestMetrics(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{Flags: []string{"--metrics", "127.0.0.1:0"}})
	base := p.MetricsURL()

	if status, body := probe(t, base, "/healthz"); status != 200 {
		t.Errorf("/healthz: %d %q", status, body)
	}
	if status, body := probe(t, base, "/readyz"); status != 200 || !strings.Contains(body, "2 of 2") {
		t.Errorf("/readyz with every worker ready: %d %q", status, body)
	}
	m := scrape(t, base)
	for series, want := range map[string]float64{
		`handoff_workers{state="ready"}`:                                        2,
		`handoff_workers{state="starting"}`:                                     0,
		`handoff_workers{state="draining"}`:                                     0,
		`handoff_workers_desired`:                                               2,
		`handoff_workers_ready_slots`:                                           2,
		`handoff_worker_starts_total`:                                           2,
		`handoff_worker_restarts_total`:                                         0,
		`handoff_worker_exits_total{cause="crashed"}`:                           0,
		`handoff_upgrades_total{kind="workers",outcome="done"}`:                 0,
		`handoff_worker_ready_seconds_count`:                                    2,
		`handoff_generation`:                                                    1,
		`handoff_last_upgrade_successful`:                                       1,
		`handoff_worker_recycles_total{reason="memory"}`:                        0,
		`handoff_upgrades_total{kind="primary",outcome="aborted"}`:              0,
		`handoff_upgrade_duration_seconds_count{kind="workers",outcome="done"}`: -1, // absent until a deploy
	} {
		v, ok := m[series]
		if want == -1 {
			if ok {
				t.Errorf("%s = %v before any deploy, want no series", series, v)
			}
			continue
		}
		if !ok || v != want {
			t.Errorf("%s = %v (present %v), want %v", series, v, ok, want)
		}
	}
	for slot := 0; slot < 2; slot++ {
		if v := m[fmt.Sprintf(`handoff_worker_resident_memory_bytes{slot="%d"}`, slot)]; v < 1<<20 {
			t.Errorf("slot %d resident memory %v, want at least 1MiB", slot, v)
		}
	}
	if m["process_resident_memory_bytes"] <= 0 || m["go_goroutines"] <= 0 {
		t.Errorf("no process or Go runtime metrics of the primary")
	}

	// The workers hold the web listener and never the metrics socket.
	metricsAddr := strings.TrimPrefix(base, "http://")
	inodes := primaryListenerInodes(t, p.PID, metricsAddr, "")
	if len(inodes) != 1 {
		t.Fatalf("metrics socket inodes %v", inodes)
	}
	for pid := range p.LiveWorkers() {
		links, err := fdLinks(pid)
		if err != nil {
			t.Fatal(err)
		}
		for fd, link := range links {
			for ino := range inodes {
				if link == "socket:["+ino+"]" {
					t.Errorf("worker %d holds the metrics socket as fd %d", pid, fd)
				}
			}
		}
	}

	// A crash: exits by cause, a restart, a start.
	if _, _, err := get(freshClient(5*time.Second), p.URL()+"exit?code=7"); err != nil {
		t.Fatal(err)
	}
	waitMetric(t, base, `handoff_worker_exits_total{cause="crashed"}`, 10*time.Second, eq(1))
	waitMetric(t, base, `handoff_worker_restarts_total`, 10*time.Second, eq(1))
	waitMetric(t, base, `handoff_workers{state="ready"}`, 10*time.Second, eq(2))

	// A deploy that finishes, then one that is refused.
	p.Install("v2")
	p.DeployOK(30 * time.Second)
	// Counted as the deploy returns, just after its last event.
	waitMetric(t, base, `handoff_upgrades_total{kind="workers",outcome="done"}`, 10*time.Second, eq(1))
	waitMetric(t, base, `handoff_worker_exits_total{cause="retired"}`, 10*time.Second, func(v float64) bool { return v >= 2 })
	m = scrape(t, base)
	if m[`handoff_upgrades_total{kind="workers",outcome="done"}`] != 1 ||
		m[`handoff_upgrade_duration_seconds_count{kind="workers",outcome="done"}`] != 1 ||
		m[`handoff_generation`] != 2 {
		t.Errorf("after a deploy: %v", pick(m, "handoff_upgrade", "handoff_generation", "handoff_worker_exits"))
	}
	p.Install("crash")
	if u := p.Deploy(30 * time.Second); !u.Aborted() {
		t.Fatalf("a crashing version was not refused: %s", u.End.Raw)
	}
	waitMetric(t, base, `handoff_upgrades_total{kind="workers",outcome="aborted"}`, 10*time.Second, eq(1))
	m = scrape(t, base)
	if m[`handoff_upgrades_total{kind="workers",outcome="aborted"}`] != 1 || m[`handoff_last_upgrade_successful`] != 0 {
		t.Errorf("after a refused deploy: %v", pick(m, "handoff_upgrade", "handoff_last"))
	}
	if status, _ := probe(t, base, "/readyz"); status != 200 {
		t.Errorf("/readyz after a refused deploy: %d, want 200 (the old workers serve)", status)
	}

	// A self-upgrade under continuous scraping and probing.
	var (
		stop     atomic.Bool
		failures atomic.Int64
		scrapes  atomic.Int64
		firstErr sync.Once
		errMsg   atomic.Value
		wg       sync.WaitGroup
	)
	for _, path := range []string{"/metrics", "/readyz", "/healthz"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := freshClient(5 * time.Second)
			for n := 0; n < 20000 && !stop.Load(); n++ {
				status, _, err := get(c, base+path)
				scrapes.Add(1)
				if err != nil || status != 200 {
					failures.Add(1)
					firstErr.Do(func() { errMsg.Store(fmt.Sprintf("%s: %d %v", path, status, err)) })
				}
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	p.Install("v3")
	p.InstallHandoff()
	p.DeployOK(60 * time.Second)
	successor := p.waitSuccessor(p.PID, 30*time.Second)
	// The old primary is gone once it has drained its workers.
	if left := waitGone([]int{p.PID}, 30*time.Second); len(left) > 0 {
		t.Fatalf("old primary %d still running", p.PID)
	}
	// A few more probes against the new primary alone: 30 more answered
	// (or failed), on each path about 10.
	n, end := scrapes.Load(), time.Now().Add(20*time.Second)
	for scrapes.Load() < n+30 && time.Now().Before(end) {
		time.Sleep(10 * time.Millisecond)
	}
	if more := scrapes.Load() - n; more < 30 {
		t.Errorf("%d scrapes and probes against the new primary alone within 20s, want 30", more)
	}
	stop.Store(true)
	wg.Wait()
	if f := failures.Load(); f != 0 {
		t.Errorf("%d of %d scrapes and probes failed across the self-upgrade; first: %v", f, scrapes.Load(), errMsg.Load())
	}
	waitMetric(t, base, `handoff_upgrades_total{kind="primary",outcome="done"}`, 10*time.Second, eq(1))
	m = scrape(t, base)
	if m[`handoff_upgrades_total{kind="primary",outcome="done"}`] != 1 || m[`handoff_generation`] != 4 {
		t.Errorf("after the self-upgrade the metrics are not the new primary's: %v", pick(m, "handoff_upgrade", "handoff_generation"))
	}
	if v := m["process_start_time_seconds"]; v == 0 {
		t.Errorf("no process_start_time_seconds")
	}
	p.shutdownAll(successor)
}

// pick returns the series whose names start with one of prefixes.
func pick(m map[string]float64, prefixes ...string) map[string]float64 {
	out := map[string]float64{}
	for k, v := range m {
		for _, pre := range prefixes {
			if strings.HasPrefix(k, pre) && !strings.Contains(k, "_bucket") {
				out[k] = v
			}
		}
	}
	return out
}

// TestReadyzBeforeReady: /healthz answers as soon as the primary listens,
// /readyz says 503 until every worker is ready, then 200, and 503 again
// from the start of a shutdown while the workers drain.
func TestReadyzBeforeReady(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{Server: "slowready", NoWait: true, Flags: []string{"--metrics", "127.0.0.1:0"}})
	base := p.MetricsURL()
	if status, body := probe(t, base, "/readyz"); status != 503 || !strings.Contains(body, "of 2") {
		t.Errorf("/readyz before the workers are ready: %d %q, want 503", status, body)
	}
	if status, _ := probe(t, base, "/healthz"); status != 200 {
		t.Errorf("/healthz during start-up: %d", status)
	}
	waitMetric(t, base, `handoff_workers{state="starting"}`, 10*time.Second, eq(2))
	p.WaitReady(30 * time.Second)
	if status, body := probe(t, base, "/readyz"); status != 200 {
		t.Errorf("/readyz once ready: %d %q", status, body)
	}

	// Shutting down: /readyz says 503 while the workers drain (one holds a
	// slow request on a connection it has accepted), /healthz still
	// answers.
	c, err := dialPinned(p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.conn.Close()
	if err := c.send("/slow?ms=2000"); err != nil {
		t.Fatal(err)
	}
	mark := p.Log.Len()
	p.Signal(p.PID, syscall.SIGTERM)
	p.mustLog(mark, 10*time.Second, p.PID, "shutdown started", nil)
	if status, body := probe(t, base, "/readyz"); status != 503 || !strings.Contains(body, "shutting down") {
		t.Errorf("/readyz during the shutdown: %d %q, want 503", status, body)
	}
	if status, _ := probe(t, base, "/healthz"); status != 200 {
		t.Errorf("/healthz during the shutdown: %d", status)
	}
	if _, err := c.receive(); err != nil {
		t.Errorf("the slow request in flight at the shutdown: %v", err)
	}
	if st := p.WaitExit(20 * time.Second); st == nil || st.ExitCode() != 0 {
		t.Errorf("after TERM: %v", st)
	}
}

// TestMetricsAddressInUse: a --metrics address that is taken is one clear
// error, and nothing is left running.
func TestMetricsAddressInUse(t *testing.T) {
	t.Parallel()
	first := StartPrimary(t, Options{Flags: []string{"--metrics", "127.0.0.1:0"}})
	taken := strings.TrimPrefix(first.MetricsURL(), "http://")
	p := StartPrimary(t, Options{NoWait: true, Flags: []string{"--metrics", taken}})
	st := p.WaitExit(20 * time.Second)
	if st == nil || st.ExitCode() != 1 {
		t.Fatalf("second primary on the same --metrics address: %v, want exit status 1", st)
	}
	p.readersWG.Wait()
	if lines := p.Log.Lines(); len(lines) != 1 || !strings.Contains(lines[0], "handoff: --metrics: listen "+taken+": address already in use") {
		t.Errorf("stderr %q, want one line: the --metrics address-in-use error", lines)
	}
	if w := p.LiveWorkers(); len(w) != 0 {
		t.Errorf("workers started: %v", w)
	}
}
