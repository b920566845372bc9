package workerpool

import (
	"context"
	"testing"
	"time"
)

// scaleAsync runs Scale in the background.
func (tp *testPool) scaleAsync(n, gen int) <-chan error {
	errc := make(chan error, 1)
	go func() { errc <- tp.Scale(context.Background(), n, spec(gen)) }()
	return errc
}

func TestScaleUpCountsNewSlotsOnceAllAreReady(t *testing.T) {
	tp := newTestPool(t, 2, nil)
	old := tp.start(t, spec(1))
	errc := tp.scaleAsync(4, 1)
	a, b := tp.l.next(t), tp.l.next(t)
	if a.slot != 2 || b.slot != 3 || a.gen != 1 || b.gen != 1 {
		t.Fatalf("launched slot %d gen %d and slot %d gen %d, want slots 2 and 3 of generation 1", a.slot, a.gen, b.slot, b.gen)
	}
	a.markReady()
	time.Sleep(10 * time.Millisecond)
	notReturned(t, errc, "Scale")
	if n := tp.Size(); n != 2 {
		t.Fatalf("Size %d while a new worker is not ready, want 2", n)
	}
	b.markReady()
	if err := recvErr(t, errc); err != nil {
		t.Fatalf("Scale: %v", err)
	}
	if n := tp.Size(); n != 4 {
		t.Fatalf("Size %d, want 4", n)
	}
	if err := checkServing(tp.Workers(), 4); err != nil {
		t.Fatal(err)
	}
	untouched(t, old)
	// The new slots are like any other: a crash is restarted.
	b.crash()
	if p := tp.l.next(t); p.slot != 3 {
		t.Fatalf("restart launched slot %d, want 3", p.slot)
	}
}

func TestScaleDownRetiresTheHighestSlotsOnly(t *testing.T) {
	tp := newTestPool(t, 4, nil)
	procs := tp.start(t, spec(1))
	if err := tp.Scale(context.Background(), 1, spec(1)); err != nil {
		t.Fatalf("Scale: %v", err)
	}
	untouched(t, procs[:1])
	for _, p := range procs[1:] {
		waitFor(t, "the removed slots' workers to drain", p.exited)
		if !p.stoppedGracefully() {
			t.Fatalf("worker of slot %d: signals %v, want the stop signal alone", p.slot, p.sigs())
		}
	}
	if n := tp.Size(); n != 1 {
		t.Fatalf("Size %d, want 1", n)
	}
	tp.l.noLaunch(t, 50*time.Millisecond)
	if err := checkServing(tp.Workers(), 1); err != nil {
		t.Fatal(err)
	}
	// And back up: the removed slots are filled anew.
	errc := tp.scaleAsync(3, 1)
	for _, want := range []int{1, 2} {
		p := tp.l.next(t)
		if p.slot != want {
			t.Fatalf("launched slot %d, want %d", p.slot, want)
		}
		p.markReady()
	}
	if err := recvErr(t, errc); err != nil {
		t.Fatalf("Scale: %v", err)
	}
	if err := checkServing(tp.Workers(), 3); err != nil {
		t.Fatal(err)
	}
}

func TestScaleDownCancelsAPendingRestartOfARemovedSlot(t *testing.T) {
	tp := newTestPool(t, 3, func(c *Config) { c.BackoffMin, c.BackoffMax = time.Minute, time.Minute })
	procs := tp.start(t, spec(1))
	procs[2].crash()
	again := tp.l.next(t) // the first restart is immediate
	again.crash()         // the second waits for the backoff
	waitFor(t, "a restart with backoff", func() bool { return len(tp.restartsScheduled()) == 2 })
	if err := tp.Scale(context.Background(), 2, spec(1)); err != nil {
		t.Fatalf("Scale: %v", err)
	}
	tp.mu.Lock()
	pending := tp.slots[2].restart != nil
	tp.mu.Unlock()
	if pending {
		t.Fatal("the removed slot's restart is still pending")
	}
	// A timer that fired as Scale ran finds the slot gone.
	tp.restart(2)
	tp.l.noLaunch(t, 50*time.Millisecond)
	untouched(t, procs[:2])
}

func TestScaleUpFailureRetiresEveryNewWorker(t *testing.T) {
	tp := newTestPool(t, 2, nil)
	old := tp.start(t, spec(1))
	errc := tp.scaleAsync(4, 1)
	a, b := tp.l.next(t), tp.l.next(t)
	a.markReady()
	b.crash()
	se := asStartError(t, recvErr(t, errc))
	if se.Slot != 3 {
		t.Fatalf("StartError for slot %d, want 3", se.Slot)
	}
	if !a.stoppedGracefully() {
		t.Fatalf("the ready new worker: signals %v, want the stop signal alone", a.sigs())
	}
	if n := tp.Size(); n != 2 {
		t.Fatalf("Size %d after a failed scale, want 2", n)
	}
	untouched(t, old)
	tp.l.noLaunch(t, 50*time.Millisecond)
}

func TestScaleUpNotReadyInTime(t *testing.T) {
	tp := newTestPool(t, 1, func(c *Config) { c.ReadyTimeout = 50 * time.Millisecond })
	tp.l.setAutoReady(0)
	tp.start(t, spec(1))
	tp.l.setAutoReady()
	errc := tp.scaleAsync(2, 1)
	p := tp.l.next(t)
	se := asStartError(t, recvErr(t, errc))
	if se.Pid != p.pid || !p.exited() {
		t.Fatalf("StartError %v; the slow worker exited=%v", se, p.exited())
	}
	if n := tp.Size(); n != 1 {
		t.Fatalf("Size %d, want 1", n)
	}
}

func TestRollAfterScaleCoversEverySlot(t *testing.T) {
	tp := newTestPool(t, 1, nil)
	tp.start(t, spec(1))
	errc := tp.scaleAsync(3, 1)
	for range 2 {
		tp.l.next(t).markReady()
	}
	if err := recvErr(t, errc); err != nil {
		t.Fatal(err)
	}
	rollc := make(chan error, 1)
	var steps []int
	go func() {
		rollc <- tp.Roll(context.Background(), spec(2), nil, func(step, n int) { steps = append(steps, n) })
	}()
	for i := range 3 {
		p := tp.l.next(t)
		if p.slot != i || p.gen != 2 {
			t.Fatalf("roll launched slot %d gen %d, want slot %d gen 2", p.slot, p.gen, i)
		}
		p.markReady()
	}
	if err := recvErr(t, rollc); err != nil {
		t.Fatal(err)
	}
	if len(steps) != 3 || steps[0] != 3 {
		t.Fatalf("roll steps %v, want 3 steps of 3", steps)
	}
}

func TestScaleBeforeStartSetsTheSize(t *testing.T) {
	tp := newTestPool(t, 2, nil)
	if err := tp.Scale(context.Background(), 3, nil); err != nil {
		t.Fatal(err)
	}
	if procs := tp.start(t, spec(1)); len(procs) != 3 {
		t.Fatalf("Start launched %d workers, want 3", len(procs))
	}
}

func TestScaleRefusesBadSizes(t *testing.T) {
	tp := newTestPool(t, 1, nil)
	tp.start(t, spec(1))
	for _, n := range []int{0, -1, MaxSize + 1} {
		if err := tp.Scale(context.Background(), n, spec(1)); err == nil {
			t.Errorf("Scale(%d) succeeded", n)
		}
	}
	if n := tp.Size(); n != 1 {
		t.Fatalf("Size %d, want 1", n)
	}
}

func TestScaleAfterShutdownFails(t *testing.T) {
	tp := newTestPool(t, 1, nil)
	tp.start(t, spec(1))
	tp.shutdownNow()
	if err := tp.Scale(context.Background(), 2, spec(1)); err != ErrClosing {
		t.Fatalf("Scale after Shutdown: %v, want ErrClosing", err)
	}
}
