package workerpool

import (
	"fmt"
	"sort"
	"testing"
	"time"
)

// launchedBatch takes the next k launches, which must all be of gen, and
// returns them with their slots.
func (tp *testPool) launchedBatch(t *testing.T, k, gen int) ([]*fakeProc, []int) {
	t.Helper()
	var ps []*fakeProc
	var slots []int
	for range k {
		p := tp.l.next(t)
		if p.gen != gen {
			t.Fatalf("launched generation %d, want %d", p.gen, gen)
		}
		ps = append(ps, p)
		slots = append(slots, p.slot)
	}
	sort.Ints(slots)
	return ps, slots
}

// With Surge K a roll starts K new workers together, the next K only once
// those took their slots: ⌈N/K⌉ start times, never more than N+K live,
// never fewer than N serving. A Surge above N starts all N at once.
func TestRollWithSurge(t *testing.T) {
	for _, c := range []struct{ n, surge, batch int }{{8, 4, 4}, {3, 20, 3}, {5, 2, 2}} {
		t.Run(fmt.Sprintf("n=%d,surge=%d", c.n, c.surge), func(t *testing.T) {
			tp := newTestPool(t, c.n, nil)
			tp.start(t, spec(1))
			stop := tp.watchServingSurge(t, c.batch)
			errc := tp.rollWith(spec(2), RollOptions{Surge: c.surge})
			for b := 0; b < c.n; b += c.batch {
				k := min(c.batch, c.n-b)
				ps, slots := tp.launchedBatch(t, k, 2)
				for j, s := range slots {
					if s != b+j {
						t.Fatalf("batch at %d launched slots %v", b, slots)
					}
				}
				// The next batch waits for this one.
				tp.l.noLaunch(t, 30*time.Millisecond)
				if live := len(tp.Workers()); live > c.n+c.batch {
					t.Fatalf("%d workers live, want at most %d", live, c.n+c.batch)
				}
				for _, p := range ps {
					p.markReady()
				}
			}
			if err := recvErr(t, errc); err != nil {
				t.Fatalf("roll: %v", err)
			}
			stop()
			for i, g := range tp.currentGens() {
				if g != 2 {
					t.Errorf("slot %d runs generation %d", i, g)
				}
			}
		})
	}
}

// A roll-back goes with the same surge: a start failure in the second
// batch rolls the slots of the first back K at a time.
func TestRollBackWithSurge(t *testing.T) {
	const n, surge = 4, 2
	tp := newTestPool(t, n, nil)
	tp.start(t, spec(1))
	stop := tp.watchServingSurge(t, surge)
	errc := tp.rollWith(spec(2), RollOptions{Surge: surge, RollBackTo: spec(1)})
	first, _ := tp.launchedBatch(t, surge, 2)
	for _, p := range first {
		p.markReady()
	}
	second, _ := tp.launchedBatch(t, surge, 2)
	second[0].markReady()
	second[1].crash()
	back, slots := tp.launchedBatch(t, surge, 1)
	if fmt.Sprint(slots) != "[0 1]" {
		t.Fatalf("roll-back launched slots %v together, want [0 1]", slots)
	}
	for _, p := range back {
		p.markReady()
	}
	// The second batch's survivor is rolled back after them.
	last := tp.l.next(t)
	if last.gen != 1 {
		t.Fatalf("launched generation %d, want 1", last.gen)
	}
	last.markReady()
	asRolledBack(t, recvErr(t, errc))
	stop()
	for i, g := range tp.currentGens() {
		if g != 1 {
			t.Errorf("slot %d runs generation %d after the roll-back", i, g)
		}
	}
}
