//go:build linux

package integration

import (
	"fmt"
	"syscall"
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

// TestSurgeHalvesSlowRolls: 8 workers that each take 1 s to get ready,
// deployed under keep-alive load with --surge 1 and with --surge 4, in one
// run: the second roll takes at most 45% of the first's time; no request
// fails; never fewer than 8 workers ready, never more than 8+K live.
func TestSurgeHalvesSlowRolls(t *testing.T) {
	t.Parallel()
	const n = 8
	slow := []string{"--mode", "slowready", "--ready-after", "1s"}
	roll := map[int]time.Duration{}
	for _, k := range []int{1, 4} {
		p, load := servingUnderLoad(t, Options{Workers: n, Args: slow, Flags: []string{"--surge", fmt.Sprint(k)}})
		mark, _ := p.beginDeploy("v2", false)
		u := p.AwaitUpgrade(mark, 2*time.Minute)
		if u.Aborted() {
			t.Fatalf("--surge %d: deploy: %s\n%s", k, u.End.Raw, p.Tail(40))
		}
		took, ok := p.Log.Wait(mark, 0, isMsg("upgrade took over"))
		if !ok {
			t.Fatalf("--surge %d: no \"upgrade took over\"", k)
		}
		roll[k], _ = took.Duration("duration")
		p.WaitServing(p.URL(), "v2", 20*time.Second)
		checkLoad(t, load, "v2")
		checkInvariantSurge(t, p.Log.Events(), n, k)
		p.Signal(p.Current(), syscall.SIGTERM) // its workers off the CPUs before the next roll
		p.WaitExit(time.Minute)
	}
	t.Logf("8 workers of 1 s: roll %s with --surge 1, %s with --surge 4 (%.0f%%)", roll[1], roll[4], 100*roll[4].Seconds()/roll[1].Seconds())
	if roll[1] == 0 || roll[4] > roll[1]*45/100 {
		t.Errorf("--surge 4 rolled in %s, --surge 1 in %s: want at most 45%%", roll[4], roll[1])
	}
}
