//go:build linux

package integration

import (
	"testing"
	"time"
)

// TestSurgeDeploy: with --surge 4 and 4 workers, a deploy starts all 4 new
// workers before it retires any old one (with --surge 1 it retires the
// first old one before it starts the second); under load no request fails
// and only the new version answers afterwards.
func TestSurgeDeploy(t *testing.T) {
	t.Parallel()
	const n = 4
	p, load := servingUnderLoad(t, Options{Workers: n, Flags: []string{"--surge", "4"}})
	mark, started := p.beginDeploy("v2", false)
	u := p.AwaitUpgrade(mark, 60*time.Second)
	if u.Aborted() {
		t.Fatalf("deploy: %s\n%s", u.End.Raw, p.Tail(60))
	}
	if got := spawnedBeforeRetire(p, mark, p.PID, started.Int0("generation")); got != n {
		t.Errorf("%d new workers spawned before the first old one retired, want %d (--surge 4)\n%s", got, n, p.Tail(60))
	}
	p.WaitServing(p.URL(), "v2", 20*time.Second)
	checkLoad(t, load, "v2")
}

// spawnedBeforeRetire counts the workers of generation gen that primary
// pid spawned, from log index mark on, before it retired a replaced one.
func spawnedBeforeRetire(p *Primary, mark, pid, gen int) int {
	spawned := 0
	for _, e := range p.Log.Events()[mark:] {
		if e.Int0("primary") != pid {
			continue
		}
		switch {
		case e.Msg == "worker spawned" && e.Int0("generation") == gen:
			spawned++
		case e.Msg == "worker retiring" && e.Str("reason") == "replaced":
			return spawned
		}
	}
	return spawned
}
