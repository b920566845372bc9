package integration

import (
	"testing"
	"time"
)

// TestExampleWrappedGo: examples/wrapped-go, which imports nothing of
// handoff, serves under handoff run and survives four deploys under load
// with no failed request.
func TestExampleWrappedGo(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{Server: "wrapped-v1"})
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	load := startLoad(t, p.URL())
	for _, v := range []string{"v2", "v1", "v2", "v1"} {
		deployUnderLoad(t, p, load, "wrapped-"+v, v)
		waitRequests(t, load, 500, 10*time.Second)
	}
	checkLoad(t, load, "v1")
	checkInvariant(t, p.Log.Events(), p.Workers)
}
