//go:build linux

package integration

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/internal/loadgen"
)

// TestSoakDeploys runs HANDOFF_SOAK back-to-back deploys (alternating two
// builds) under 16 keep-alive and 16 new-connection clients and fails on a
// single failed request. It is skipped unless HANDOFF_SOAK is set: run it
// with 'make soak'. With HANDOFF_SOAK_PRIMARY set, every deploy also
// replaces the handoff binary, so each one hands over to a new primary.
// With HANDOFF_SOAK_LIB set, the program is examples/hello in library
// mode, and every deploy is a rebuilt binary of it: a new primary each time.
func TestSoakDeploys(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("HANDOFF_SOAK"))
	if n <= 0 {
		t.Skip("set HANDOFF_SOAK=N to run N deploys under load")
	}
	lib := os.Getenv("HANDOFF_SOAK_LIB") != ""
	// Probation off: the soak measures the roll, deploy after deploy (a
	// deploy asked for during a probation would end it anyway).
	opts := Options{Flags: []string{"--drain-timeout", "5s", "--min-uptime", "0"}}
	if lib {
		opts.Lib = "hello-v1"
	}
	p := StartPrimary(t, opts)
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	load := loadgen.Start(context.Background(), loadgen.Config{
		URL:         p.URL(),
		KeepAlive:   16,
		NewConn:     16,
		Duration:    time.Duration(n)*time.Second + time.Minute,
		MaxRequests: 50_000_000,
		Timeout:     5 * time.Second,
	})
	t.Cleanup(func() { load.Stop() })
	waitRequests(t, load, 100, 10*time.Second)
	primary := os.Getenv("HANDOFF_SOAK_PRIMARY") != "" || lib
	start := time.Now()
	var slowest time.Duration
	for i := 0; i < n; i++ {
		v := []string{"v2", "v1"}[i%2]
		switch {
		case lib:
			p.InstallLib("hello-" + v)
		case primary:
			p.Install(v)
			p.InstallHandoff()
		default:
			p.Install(v)
		}
		u := p.DeployOK(60 * time.Second)
		if k := u.Started.Str("kind"); primary && k != "primary" {
			t.Fatalf("deploy %d: kind %q, want a hand-over to a new primary", i+1, k)
		}
		if d, ok := u.End.Duration("duration"); ok && d > slowest {
			slowest = d
		}
		if s := load.Snapshot(); s.Failures != 0 {
			t.Fatalf("deploy %d of %d: %d failed requests: %v %q", i+1, n, s.Failures, s.FailuresByKind, s.FirstErrors)
		}
	}
	elapsed := time.Since(start)
	res := checkLoad(t, load, "")
	t.Logf("%d deploys of %d workers in %s (%.0f ms each, slowest %s); %d requests, %d failed",
		n, p.Workers, elapsed.Round(time.Millisecond), float64(elapsed.Milliseconds())/float64(n), slowest, res.Requests, res.Failures)
	checkInvariant(t, p.Log.Events(), p.Workers)
}
