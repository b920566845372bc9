//go:build linux

package integration

import (
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// recycled waits for the "worker recycle" of pid with reason, then for its
// replacement in the same slot to be ready and for pid to exit, and
// returns the replacement's pid and pid's exit event.
func (p *Primary) recycled(from, pid int, reason string, d time.Duration) (int, Event) {
	p.t.Helper()
	rec := p.mustLog(from, d, p.PID, "worker recycle", func(e Event) bool { return e.Int0("pid") == pid })
	if got := rec.Str("reason"); got != reason {
		p.t.Fatalf("worker %d recycled for %q, want %q: %s", pid, got, reason, rec.Raw)
	}
	slot := rec.Int0("slot")
	spawned := p.mustLog(rec.Seq, d, p.PID, "worker spawned", func(e Event) bool { return e.Int0("slot") == slot })
	newPID := spawned.Int0("pid")
	ready := p.mustLog(spawned.Seq, d, p.PID, "worker ready", func(e Event) bool { return e.Int0("pid") == newPID })
	retiring := p.mustLog(rec.Seq, d, p.PID, "worker retiring", func(e Event) bool { return e.Int0("pid") == pid })
	if retiring.Seq < ready.Seq {
		p.t.Errorf("worker %d retired before its replacement %d was ready", pid, newPID)
	}
	if got := retiring.Str("reason"); got != reason {
		p.t.Errorf("worker %d retiring for %q, want %q", pid, got, reason)
	}
	exited := p.mustLog(retiring.Seq, d, p.PID, "worker exited", func(e Event) bool { return e.Int0("pid") == pid })
	return newPID, exited
}

// TestMaxMemoryRecyclesUnderLoad: a worker that grows past --max-memory is
// replaced, the new one ready before the old one drains, under keep-alive
// and new-connection load with no failed request; the others are left
// alone, and the metrics count the recycle.
func TestMaxMemoryRecyclesUnderLoad(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{Flags: []string{"--max-memory", "96M", "--metrics", "127.0.0.1:0"}})
	load := startLoad(t, p.URL())
	before := p.LiveWorkers()

	mark := p.Log.Len()
	status, body, err := get(freshClient(10*time.Second), p.URL()+"grow?mb=160")
	if err != nil || status != 200 {
		t.Fatalf("/grow: %d %q %v", status, body, err)
	}
	fat := parseReply(status, body).PID
	if rss := workerRSS(t, fat); rss < 150<<20 {
		t.Fatalf("worker %d resident memory %d after growing 160MiB", fat, rss)
	}
	newPID, exited := p.recycled(mark, fat, "memory", 30*time.Second)
	if st := exited.Str("status"); st != "exit status 0" {
		t.Errorf("recycled worker exited with %q, want a clean drain", st)
	}
	waitRequests(t, load, 200, 10*time.Second)
	checkLoad(t, load, "v1")

	for pid := range before {
		if pid != fat && !alive(pid) {
			t.Errorf("worker %d, under the limit, is gone", pid)
		}
	}
	if rss := workerRSS(t, newPID); rss > 96<<20 {
		t.Errorf("replacement %d resident memory %d", newPID, rss)
	}
	// One recycle: none of the others went over.
	if n := len(p.Log.Filter("worker recycle")); n != 1 {
		t.Errorf("%d recycles, want 1", n)
	}
	waitMetric(t, p.MetricsURL(), `handoff_worker_recycles_total{reason="memory"}`, 10*time.Second, eq(1))
	checkInvariant(t, p.Log.Events(), p.Workers)
	p.shutdownAll(p.PID)
}

// workerRSS reads VmRSS of pid in bytes.
func workerRSS(t *testing.T, pid int) int64 {
	t.Helper()
	st, ok := readStatus(pid)
	if !ok {
		t.Fatalf("no /proc/%d/status", pid)
	}
	f := strings.Fields(st["VmRSS"])
	if len(f) != 2 {
		t.Fatalf("pid %d: VmRSS %q", pid, st["VmRSS"])
	}
	kb, _ := strconv.ParseInt(f[0], 10, 64)
	return kb << 10
}

// TestWatchdogReplacesHungWorker: with --watchdog, workers get
// WATCHDOG_USEC and WATCHDOG_PID (their own pid, so go-systemd's
// SdWatchdogEnabled accepts it). One that stops pinging, or sends
// WATCHDOG=trigger, is replaced, the new worker first, and retired with a
// drain of one watchdog period: one that still serves drains and loses no
// request under load. One that is truly stuck (SIGSTOP) is killed once
// that period has passed.
func TestWatchdogReplacesHungWorker(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{Flags: []string{"--watchdog", "1s"}})
	r, err := askWorker("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if r.Env["WATCHDOG_USEC"] != "1000000" || r.Env["WATCHDOG_PID"] != strconv.Itoa(r.PID) {
		t.Fatalf("worker %d: WATCHDOG_USEC=%q WATCHDOG_PID=%q", r.PID, r.Env["WATCHDOG_USEC"], r.Env["WATCHDOG_PID"])
	}
	load := startLoad(t, p.URL())
	for _, path := range []string{"hang", "hang?trigger=1"} {
		mark := p.Log.Len()
		status, body, err := get(freshClient(5*time.Second), p.URL()+path)
		if err != nil || status != 200 {
			t.Fatalf("/%s: %d %q %v", path, status, body, err)
		}
		hung := parseReply(status, body).PID
		start := time.Now()
		_, exited := p.recycled(mark, hung, "watchdog", 30*time.Second)
		if st := exited.Str("status"); st != "exit status 0" {
			t.Errorf("/%s: silent but serving worker exited with %q, want a clean drain", path, st)
		}
		t.Logf("/%s: worker %d replaced %s after it stopped pinging", path, hung, time.Since(start).Round(time.Millisecond))
		rec := p.Log.Filter("worker recycle")
		if last := rec[len(rec)-1]; strings.Contains(path, "trigger") != (last.Str("trigger") == "true") {
			t.Errorf("/%s: %s", path, last.Raw)
		}
	}
	// The other workers keep pinging: no further recycle, for three
	// watchdog periods (a silent worker was replaced within that above).
	mark := p.Log.Len()
	waitRequests(t, load, 500, 10*time.Second)
	time.Sleep(3 * time.Second)
	for _, e := range p.Log.Events()[mark:] {
		if e.Msg == "worker recycle" {
			t.Errorf("a pinging worker was recycled: %s", e.Raw)
		}
	}
	checkLoad(t, load, "v1")

	// Truly stuck: stopped, it neither pings nor drains.
	var stuck int
	for pid, ev := range p.LiveWorkers() {
		if ev.Int0("slot") == 0 {
			stuck = pid
		}
	}
	mark = p.Log.Len()
	p.Signal(stuck, syscall.SIGSTOP)
	_, exited := p.recycled(mark, stuck, "watchdog", 30*time.Second)
	if st := exited.Str("status"); st != "signal: killed" {
		t.Errorf("stopped worker exited with %q, want killed", st)
	}
	if _, ok := p.Log.Wait(mark, 0, func(e Event) bool {
		return e.Msg == "worker did not drain in time, killing it" && e.Int0("pid") == stuck && e.Str("drain_timeout") == "1s"
	}); !ok {
		t.Errorf("the stopped worker was not killed after a drain of one watchdog period")
	}
	checkInvariant(t, p.Log.Events(), p.Workers)
	p.shutdownAll(p.PID)
}

// readStatus reads /proc/PID/status as key -> value.
func readStatus(pid int) (map[string]string, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return nil, false
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			out[k] = strings.TrimSpace(v)
		}
	}
	return out, true
}
