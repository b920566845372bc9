//go:build linux

package integration

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"
)

// TestWatchLatency measures, with 2 workers of the hello-world testserver,
// the time from a new executable landing by rename to the new version
// answering on every worker. It is a measurement, not a timed test: it
// runs only with HANDOFF_WATCH_ROUNDS=N and reports the median, never
// fails on a number.
func TestWatchLatency(t *testing.T) {
	rounds, _ := strconv.Atoi(os.Getenv("HANDOFF_WATCH_ROUNDS"))
	if rounds <= 0 {
		t.Skip("set HANDOFF_WATCH_ROUNDS=N to measure")
	}
	p := StartPrimary(t, Options{Workers: 2, Flags: []string{"--watch"}})
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	c := freshClient(time.Second)
	var logged, served []time.Duration
	for i := 0; i < rounds; i++ {
		v := []string{"v2", "v3"}[i%2]
		tmp := filepath.Join(p.Dir, ".server.next")
		if err := copyFile(servers[v], tmp, 0o755); err != nil {
			t.Fatal(err)
		}
		mark := p.Log.Len()
		t0 := time.Now()
		if err := os.Rename(tmp, p.Server); err != nil {
			t.Fatal(err)
		}
		// Served: every slot has answered with the new version.
		slots := map[int]bool{}
		for len(slots) < p.Workers {
			if time.Since(t0) > 30*time.Second {
				t.Fatalf("round %d: %s not served by every worker\n%s", i, v, p.Tail(40))
			}
			status, body, err := get(c, p.URL())
			if r := parseReply(status, body); err == nil && r.Version == v {
				slots[r.Slot] = true
			}
		}
		served = append(served, time.Since(t0))
		u := p.AwaitUpgrade(mark, 30*time.Second)
		if u.Aborted() {
			t.Fatalf("round %d aborted: %s", i, u.End.Raw)
		}
		// Finished: every old worker retired (as logged).
		logged = append(logged, time.Since(t0))
		p.WaitServing(p.URL(), v, 10*time.Second)
	}
	med := func(ds []time.Duration) time.Duration {
		s := slices.Sorted(slices.Values(ds))
		return s[len(s)/2]
	}
	t.Logf("rename → new version answering on both workers: median %s (min %s, max %s) over %d rounds",
		med(served), slices.Min(served), slices.Max(served), rounds)
	t.Logf("rename → \"upgrade finished\" read from the log: median %s (min %s, max %s)", med(logged), slices.Min(logged), slices.Max(logged))
}
