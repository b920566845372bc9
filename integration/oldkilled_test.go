//go:build linux

package integration

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/internal/loadgen"
	"github.com/handoff-dev/handoff/runtime"
)

// TestOldPrimaryKilledDuringHandOver: the old primary is SIGKILLed (an
// OOM kill, kill -9) at one point of a self-upgrade under load; its
// workers die with it (Pdeathsig). The new primary, which holds the
// listeners, carries on: it starts workers of the new generation for every
// slot it had not taken over yet, writes the pid file, answers status and
// serves N workers. Only requests on the old primary's workers may fail:
// the load has 8 keep-alive and 8 new-connection clients, each with at most
// one request in flight and one connection open, so at most 16 requests
// (one per client) can be lost to the kill. Nothing of either primary is
// left after the new one shuts down.
func TestOldPrimaryKilledDuringHandOver(t *testing.T) {
	t.Parallel()
	const (
		workers = 3
		// clients of startLoad: each holds at most one connection and
		// one request in flight when the old primary dies.
		maxLost = 8 + 8
	)
	// Each point waits for its moment and returns; the old primary is
	// killed right after.
	points := []struct {
		name string
		// wrap: DIR/handoff is a script that waits before it execs the
		// new handoff, so the kill comes before the new primary connects.
		wrap bool
		at   func(t *testing.T, p *Primary, mark, old int)
	}{
		{"BeforeConnect", true, func(t *testing.T, p *Primary, mark, old int) {
			waitFile(t, filepath.Join(p.Dir, "wrapper-started"), 20*time.Second)
		}},
		{"AfterState", false, func(t *testing.T, p *Primary, mark, old int) {
			if _, ok := p.Log.Wait(mark, 20*time.Second, isMsg("taking over")); !ok {
				t.Fatalf("no new primary logged \"taking over\"\n%s", p.Tail(60))
			}
		}},
		{"MidRoll", false, func(t *testing.T, p *Primary, mark, old int) {
			p.mustLog(mark, 20*time.Second, old, "worker retiring", func(e Event) bool {
				return e.Str("reason") == "handed over" && e.Int0("slot") == 0
			})
		}},
		// The new primary calls tableflip's Ready a moment after the last
		// retire: the kill lands on either side of it (the test logs
		// which), and either way the new primary must serve.
		{"AfterLastRetire", false, func(t *testing.T, p *Primary, mark, old int) {
			p.mustLog(mark, 30*time.Second, old, "worker retiring", func(e Event) bool {
				return e.Str("reason") == "handed over" && e.Int0("slot") == workers-1
			})
		}},
	}
	for _, pt := range points {
		t.Run(pt.name, func(t *testing.T) {
			t.Parallel()
			p := StartPrimary(t, Options{Workers: workers, Args: []string{"--ready-after", "700ms"}})
			old := p.PID
			p.WaitServing(p.URL(), "v1", 10*time.Second)
			load := startLoad(t, p.URL())

			if pt.wrap {
				next := filepath.Join(p.Dir, "handoff-next")
				if err := copyFile(handoffBin, next, 0o755); err != nil {
					t.Fatal(err)
				}
				// fd 4 is tableflip's pipe of the listeners' names: the
				// old primary writes them right after the fork, and a
				// kill before that leaves nothing a new primary could
				// serve on. Started means past that point.
				installFile(t, p.Bin, "#!/bin/bash\n"+
					"i=0\n"+
					"until read -t 0 -u 4 || [ $i -ge 3000 ]; do sleep 0.01; i=$((i+1)); done\n"+
					": > '"+p.Dir+"/wrapper-started'\n"+
					"i=0\n"+
					"while [ ! -e '"+p.Dir+"/wrapper-go' ] && [ $i -lt 3000 ]; do sleep 0.01; i=$((i+1)); done\n"+
					"exec '"+next+"' \"$@\"\n")
			} else {
				p.InstallHandoff()
			}
			p.Install("slowready")
			mark := p.Log.Len()
			p.Signal(old, syscall.SIGHUP)
			started := p.mustLog(mark, 10*time.Second, old, "upgrade started", nil)
			gen := started.Int0("generation")
			pt.at(t, p, mark, old)

			before := load.Snapshot()
			p.Signal(old, syscall.SIGKILL)
			if st := p.WaitExit(5 * time.Second); st == nil {
				t.Fatalf("old primary %d not gone 5s after SIGKILL", old)
			}
			t.Logf("old primary killed with %d requests done, %d failed", before.Requests, before.Failures)
			if pt.wrap {
				writeBytes(t, filepath.Join(p.Dir, "wrapper-go"), nil, 0o644)
			}

			successor := p.waitSuccessor(old, 30*time.Second)
			p.mustLog(mark, 30*time.Second, successor, "primary ready", nil)
			_, handedOver := p.logged(mark, 0, old, "handed over", nil)
			_, gone := p.logged(mark, 0, successor, "old primary gone", nil)
			t.Logf("the old primary had handed over: %v; the new one saw it gone during the take-over: %v", handedOver, gone)
			ws := p.waitSettled(successor, 20*time.Second)
			bySlot := checkServedBy(t, answersAll(t, freshClient(2*time.Second), p.URL(), 60, workers), ws, workers)
			for slot, r := range bySlot {
				if r.Version != "vslow" || r.Gen != gen {
					t.Errorf("slot %d answers %q, want vslow of generation %d", slot, strings.TrimSpace(r.Body), gen)
				}
			}
			st := p.waitStatus("the new primary's ready workers", 10*time.Second, func(st runtime.Status) bool {
				return st.Primary.Pid == successor && exactly(workers)(st)
			})
			for _, w := range st.Workers {
				if w.Generation != gen {
					t.Errorf("status: worker %+v, want generation %d", w, gen)
				}
			}
			// Requests keep being answered after the kill.
			res := checkLoadLost(t, load, maxLost, "on the killed primary's workers")
			if res.Versions["vslow"] == 0 {
				t.Errorf("no answer from the new generation: %v", res.Versions)
			}
			p.shutdownAll(successor)
		})
	}
}

// checkLoadLost waits for 200 more requests answered, stops the load and
// fails the test when more than maxLost failed (one per client at most,
// where: on the workers a kill took).
func checkLoadLost(t *testing.T, load *loadgen.Run, maxLost int64, where string) loadgen.Result {
	t.Helper()
	waitRequests(t, load, 200, 20*time.Second)
	res := load.Stop()
	t.Logf("load: %s", res)
	if res.Failures > maxLost {
		t.Errorf("%d of %d requests failed, want at most %d (one per client, %s): %v %q",
			res.Failures, res.Requests, maxLost, where, res.FailuresByKind, res.FirstErrors)
	}
	return res
}

// waitFile waits until path exists.
func waitFile(t *testing.T, path string, d time.Duration) {
	t.Helper()
	end := time.Now().Add(d)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("%s not there after %s", path, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
