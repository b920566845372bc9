package metrics

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/handoff-dev/handoff/internal/steer"
	"github.com/handoff-dev/handoff/workerpool"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakePool is a Pool of fixed workers.
type fakePool struct {
	workers     []workerpool.WorkerInfo
	ready, size int
}

func (p *fakePool) Workers() []workerpool.WorkerInfo { return p.workers }
func (p *fakePool) ReadySlots() (int, int)           { return p.ready, p.size }

// plainSocks are a worker's sockets that do not know their queue.
type plainSocks struct{}

func (plainSocks) FDs() []int                      { return nil }
func (plainSocks) Drain(ctx context.Context) error { return nil }

// queueSocks know it, as internal/sockets' Set does.
type queueSocks struct {
	plainSocks
	queue int
	given uint64
}

func (s queueSocks) Queue() (int, uint64) { return s.queue, s.given }

// scrape returns the handoff_ lines of h's /metrics (the Go runtime's
// and the process's own metrics vary).
func scrape(t *testing.T, h http.Handler) string {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("/metrics: %d %s", rec.Code, rec.Body)
	}
	var out strings.Builder
	for line := range strings.Lines(rec.Body.String()) {
		name := strings.TrimPrefix(strings.TrimPrefix(line, "# HELP "), "# TYPE ")
		if strings.HasPrefix(name, "handoff_") {
			out.WriteString(line)
		}
	}
	return out.String()
}

// probesOf is a LastProbe over a map.
func probesOf(m map[int]Probe) LastProbe {
	return func(pid int) (Probe, bool) {
		pr, ok := m[pid]
		return pr, ok
	}
}

// TestExposition: the handoff_ metrics, names, help strings, labels and
// values, are a contract that dashboards and tests outside the repository
// scrape: testdata/exposition.txt changes only with them.
func TestExposition(t *testing.T) {
	m := New()
	for range 3 {
		m.WorkerStarted(0)
	}
	m.WorkerReady(0, 20*time.Millisecond)
	m.WorkerReady(1, 2*time.Second)
	m.WorkerRestarted(1)
	m.WorkerExited(1, workerpool.ExitCrashed)
	m.WorkerExited(0, workerpool.ExitRetired)
	m.WorkerExited(2, workerpool.ExitRetired)
	m.Deployed(KindWorkers, OutcomeDone, 1500*time.Millisecond, 2)
	m.Deployed(KindRollback, OutcomeRolledBack, 40*time.Second, 2)
	m.Recycled(RecycleMemory)
	m.Probed("ready", true)
	m.Probed("health", false)
	m.Probed("health", false)

	// Negative pids: no /proc entry, so no resident memory (its own test).
	at := time.Unix(1700000000, 500000000)
	pool := &fakePool{ready: 1, size: 3, workers: []workerpool.WorkerInfo{
		{Slot: 0, Pid: -1, Ready: true, Current: true, Socks: queueSocks{queue: 3, given: 10}},
		{Slot: 1, Pid: -2, Ready: true, Current: true, Socks: plainSocks{}},
		{Slot: 1, Pid: -3}, // a roll's new worker, not ready yet: counted by state only
		{Slot: 2, Pid: -4, Ready: true, Draining: true, Current: true, Socks: queueSocks{queue: 1}}, // retiring: counted by state only
	}}
	m.Collect(pool, steer.RoundRobin, probesOf(map[int]Probe{
		-1: {Kind: "health", OK: true, At: at},
		-2: {Kind: "ready", OK: false, At: at},
		-4: {Kind: "health", OK: false, At: at},
	}))
	got := scrape(t, NewServer(m, pool).Handler())
	want, err := os.ReadFile("testdata/exposition.txt")
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("/metrics:\n%s\nwant (testdata/exposition.txt):\n%s", got, want)
	}
}

// TestModes: each slot's accept queue only with sockets that know it (a
// socket per worker), the connections given only in round-robin mode.
func TestModes(t *testing.T) {
	for _, tc := range []struct {
		mode        steer.Mode
		socks       workerpool.Socks
		queue, give bool
	}{
		{steer.Shared, nil, false, false},
		{steer.Random, queueSocks{queue: 2, given: 0}, true, false},
		{steer.RoundRobin, queueSocks{queue: 2, given: 7}, true, true},
	} {
		t.Run(tc.mode.String(), func(t *testing.T) {
			m := New()
			pool := &fakePool{ready: 1, size: 1, workers: []workerpool.WorkerInfo{
				{Slot: 0, Pid: -1, Ready: true, Current: true, Socks: tc.socks}}}
			m.Collect(pool, tc.mode, nil)
			got := scrape(t, NewServer(m, pool).Handler())
			if want := `handoff_balance_mode{mode="` + tc.mode.String() + `"} 1` + "\n"; !strings.Contains(got, want) {
				t.Errorf("no %q in\n%s", want, got)
			}
			if has := strings.Contains(got, `handoff_worker_accept_queue{slot="0"} 2`+"\n"); has != tc.queue {
				t.Errorf("accept queue shown: %v, want %v\n%s", has, tc.queue, got)
			}
			if has := strings.Contains(got, `handoff_worker_connections_given_total{slot="0"} 7`+"\n"); has != tc.give {
				t.Errorf("connections given shown: %v, want %v\n%s", has, tc.give, got)
			}
			if strings.Contains(got, "handoff_worker_last_probe") {
				t.Errorf("probes shown without any:\n%s", got)
			}
		})
	}
}

// TestResidentMemory: each current slot's worker's VmRSS.
func TestResidentMemory(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("VmRSS is read from /proc")
	}
	m := New()
	pool := &fakePool{ready: 1, size: 1, workers: []workerpool.WorkerInfo{
		{Slot: 0, Pid: os.Getpid(), Ready: true, Current: true}}}
	m.Collect(pool, steer.Shared, nil)
	got := scrape(t, NewServer(m, pool).Handler())
	var v float64
	for line := range strings.Lines(got) {
		if rest, ok := strings.CutPrefix(line, `handoff_worker_resident_memory_bytes{slot="0"} `); ok {
			if _, err := fmt.Sscan(rest, &v); err != nil {
				t.Fatalf("%q: %v", line, err)
			}
		}
	}
	if v <= 0 {
		t.Errorf("no resident memory of slot 0 (this process):\n%s", got)
	}
}

// TestDeployed: the last deploy's outcome and the generation served.
func TestDeployed(t *testing.T) {
	m := New()
	pool := &fakePool{}
	m.Collect(pool, steer.Shared, nil)
	h := NewServer(m, pool).Handler()
	for _, step := range []struct {
		do   func()
		want []string
	}{
		{func() {}, []string{"handoff_last_upgrade_successful 1\n", "handoff_generation 0\n"}},
		{func() { m.SetGeneration(1) }, []string{"handoff_last_upgrade_successful 1\n", "handoff_generation 1\n"}},
		{func() { m.Deployed(KindWorkers, OutcomeAborted, time.Second, 1) },
			[]string{"handoff_last_upgrade_successful 0\n", "handoff_generation 1\n", `handoff_upgrades_total{kind="workers",outcome="aborted"} 1` + "\n"}},
		{func() { m.Deployed(KindPrimary, OutcomeDone, time.Second, 3) },
			[]string{"handoff_last_upgrade_successful 1\n", "handoff_generation 3\n", `handoff_upgrades_total{kind="primary",outcome="done"} 1` + "\n"}},
	} {
		step.do()
		got := scrape(t, h)
		for _, w := range step.want {
			if !strings.Contains(got, w) {
				t.Errorf("no %q in\n%s", w, got)
			}
		}
	}
}

// TestNil: a primary without --metrics has a nil Set and Server.
func TestNil(t *testing.T) {
	var m *Set
	m.Deployed(KindWorkers, OutcomeDone, time.Second, 2)
	m.Recycled(RecycleHealth)
	m.Probed("health", true)
	m.SetGeneration(2)
	var s *Server
	s.Close()
	NewServer(New(), &fakePool{}).Close() // never served
}

func TestReadyz(t *testing.T) {
	pool := &fakePool{ready: 1, size: 2}
	s := NewServer(New(), pool)
	h := s.Handler()
	get := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		if ct := rec.Header().Get("Content-Type"); ct != "text/plain; charset=utf-8" {
			t.Errorf("%s: Content-Type %q", path, ct)
		}
		return rec.Code, rec.Body.String()
	}
	check := func(path string, code int, body string) {
		t.Helper()
		if c, b := get(path); c != code || b != body {
			t.Errorf("%s: %d %q, want %d %q", path, c, b, code, body)
		}
	}
	check("/healthz", 200, "ok\n")
	check("/readyz", 503, "not ready: 1 of 2 workers ready\n")
	pool.ready = 2
	check("/readyz", 200, "ready: 2 of 2 workers ready\n")
	s.ShuttingDown()
	check("/readyz", 503, "shutting down: 2 of 2 workers ready\n")
	check("/healthz", 200, "ok\n")
}

// TestServe: the server answers on its listener until Close, which may
// be called twice (at the hand-over, and as the primary returns).
func TestServe(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(New(), &fakePool{ready: 1, size: 1})
	s.Serve(ln, zap.NewNop())
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
		resp, err := c.Get("http://" + ln.Addr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || len(b) == 0 {
			t.Errorf("%s: %d %q", path, resp.StatusCode, b)
		}
	}
	s.Close()
	s.Close()
	if conn, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		conn.Close()
		t.Errorf("%s still accepts after Close", ln.Addr())
	}
}
