package workerpool

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// rollWith runs RollWith in the background.
func (tp *testPool) rollWith(spec *Spec, o RollOptions) <-chan error {
	errc := make(chan error, 1)
	go func() { errc <- tp.RollWith(context.Background(), spec, o) }()
	return errc
}

// rollAll makes each new worker of the roll ready as it is launched and
// returns them by slot.
func (tp *testPool) rollAll(t *testing.T, n, gen int) []*fakeProc {
	t.Helper()
	var fresh []*fakeProc
	for i := 0; i < n; i++ {
		p := tp.l.next(t)
		if p.slot != i || p.gen != gen {
			t.Fatalf("step %d launched slot %d generation %d", i, p.slot, p.gen)
		}
		p.markReady()
		fresh = append(fresh, p)
	}
	last := fresh[n-1]
	waitFor(t, "the last new worker installed", func() bool { return tp.current()[last.slot].Pid == last.pid })
	return fresh
}

func asRolledBack(t *testing.T, err error) *RolledBackError {
	t.Helper()
	var rb *RolledBackError
	if !errors.As(err, &rb) {
		t.Fatalf("error %v (%T), want *RolledBackError", err, err)
	}
	return rb
}

// currentGens is the generation of every slot's current worker.
func (tp *testPool) currentGens() map[int]int {
	out := map[int]int{}
	for i, w := range tp.current() {
		out[i] = w.Generation
	}
	return out
}

// The roll does not wait for probation. Without Standby every old worker
// retires as soon as its slot's new worker is ready, the last one too:
// once the roll is done only the new version serves, and RollWith returns
// once the last new worker has been ready for MinUptime. With Standby the
// last slot's old worker stands by (N+1 workers, N ready in their slots)
// until then, and only then retires.
func TestRollWithProbationPasses(t *testing.T) {
	for _, standby := range []bool{false, true} {
		t.Run(fmt.Sprintf("standby=%v", standby), func(t *testing.T) {
			const n = 3
			tp := newTestPool(t, n, nil)
			old := tp.start(t, spec(1))
			stop := tp.watchServing(t)
			const minUptime = 150 * time.Millisecond
			rolled := make(chan struct{})
			errc := tp.rollWith(spec(2), RollOptions{MinUptime: minUptime, RollBackTo: spec(1), Standby: standby,
				Rolled: func() { close(rolled) }})
			fresh := tp.rollAll(t, n, 2)
			lastReady := tp.current()[n-1].ReadyAt
			select {
			case <-rolled:
			case <-time.After(waitLimit):
				t.Fatal("Rolled not called")
			}
			tp.waitReaped(t, old[1])
			if standby {
				if len(old[2].sigs()) != 0 {
					t.Fatal("the last slot's old worker retired before the probation was over")
				}
			} else {
				waitFor(t, "the last slot's old worker retired", old[2].stoppedGracefully)
			}
			if c := tp.current()[2]; c.Pid != fresh[2].pid {
				t.Fatalf("slot 2 held by %d, want the new worker %d", c.Pid, fresh[2].pid)
			}
			notReturned(t, errc, "RollWith")
			if err := recvErr(t, errc); err != nil {
				t.Fatal(err)
			}
			if took := time.Since(lastReady); took < minUptime {
				t.Errorf("RollWith returned %v after the last worker was ready, before its probation of %v", took, minUptime)
			}
			if !old[2].stoppedGracefully() {
				t.Errorf("the last slot's old worker was not retired: signals %v", old[2].sigs())
			}
			stop()
			// Past probation, a crash is restarted with the new spec.
			fresh[0].crash()
			if p := tp.l.next(t); p.slot != 0 || p.gen != 2 {
				t.Fatalf("restart of slot %d generation %d", p.slot, p.gen)
			}
		})
	}
}

// A new worker that exits within its probation fails the deploy: it is
// not restarted, and every slot goes back to the previous spec: the
// standing worker takes the last slot back at once, the dead slot is
// refilled, and the live new workers are replaced one at a time.
func TestRollWithProbationFailureRollsBackEverySlot(t *testing.T) {
	const n = 3
	tp := newTestPool(t, n, nil)
	old := tp.start(t, spec(1))
	var cause error
	errc := tp.rollWith(spec(2), RollOptions{MinUptime: never, RollBackTo: spec(1), Standby: true, OnRollBack: func(err error) { cause = err }})
	fresh := tp.rollAll(t, n, 2)
	tp.waitReaped(t, old[1])
	fresh[1].exitWith(Exit{Status: "exit status 4", Code: 4, StderrTail: "boom"})

	// Slot 1 is refilled by a worker of generation 1; slot 0's new worker
	// is replaced, start-new-then-retire.
	seen := map[int]*fakeProc{}
	for len(seen) < 2 {
		p := tp.l.next(t)
		if p.gen != 1 {
			t.Fatalf("launched generation %d in slot %d after the failure", p.gen, p.slot)
		}
		seen[p.slot] = p
		if p.slot == 0 && len(fresh[0].sigs()) != 0 {
			t.Fatal("slot 0's new worker retired before its replacement was ready")
		}
		p.markReady()
	}
	if seen[0] == nil || seen[1] == nil {
		t.Fatalf("roll-back launched slots %v, want 0 and 1", seen)
	}
	rb := asRolledBack(t, recvErr(t, errc))
	var pe *ProbationError
	if !errors.As(rb, &pe) || pe.Slot != 1 || pe.Pid != fresh[1].pid || pe.Exit.Code != 4 || pe.Generation != 2 {
		t.Fatalf("cause %#v", rb.Cause)
	}
	if rb.Slots != n || rb.Err != nil || cause != rb.Cause {
		t.Fatalf("rolled back %+v, OnRollBack %v", rb, cause)
	}
	if !strings.Contains(pe.Error(), "worker 1 (pid ") || !strings.Contains(pe.Error(), "after it was ready") {
		t.Errorf("ProbationError %q", pe.Error())
	}
	for i, g := range tp.currentGens() {
		if g != 1 {
			t.Errorf("slot %d runs generation %d", i, g)
		}
	}
	if c := tp.current()[2]; c.Pid != old[2].pid {
		t.Errorf("slot 2 held by %d, want the standing old worker %d", c.Pid, old[2].pid)
	}
	for _, p := range []*fakeProc{fresh[0], fresh[2]} {
		waitFor(t, "new worker retired", p.stoppedGracefully)
	}
	if n := tp.logs.FilterMessage("worker failed probation").Len(); n != 1 {
		t.Errorf("%d \"worker failed probation\" events", n)
	}
	// The failed build is never started again: a crash restarts the old.
	seen[0].crash()
	if p := tp.l.next(t); p.slot != 0 || p.gen != 1 {
		t.Fatalf("restart of slot %d generation %d", p.slot, p.gen)
	}
}

// With one worker, a new worker that dies within its probation hands the
// slot straight back to the old one, which stood by: the slot never goes
// without a ready worker.
func TestRollWithProbationOneWorkerNeverDark(t *testing.T) {
	tp := newTestPool(t, 1, nil)
	old := tp.start(t, spec(1))
	errc := tp.rollWith(spec(2), RollOptions{MinUptime: never, RollBackTo: spec(1), Standby: true})
	fresh := tp.rollAll(t, 1, 2)
	stop := tp.watchServing(t)
	fresh[0].crash()
	rb := asRolledBack(t, recvErr(t, errc))
	stop()
	if rb.Slots != 1 || rb.Err != nil {
		t.Fatalf("%+v", rb)
	}
	if c := tp.current()[0]; c.Pid != old[0].pid {
		t.Fatalf("slot 0 held by %d, want %d", c.Pid, old[0].pid)
	}
	untouched(t, old)
	tp.l.noLaunch(t, 50*time.Millisecond)
}

// A failure while the roll still runs stops it: the next slot's worker,
// not ready yet, is retired, and the slots rolled so far go back.
func TestRollWithProbationFailureDuringTheRoll(t *testing.T) {
	const n = 3
	tp := newTestPool(t, n, nil)
	old := tp.start(t, spec(1))
	errc := tp.rollWith(spec(2), RollOptions{MinUptime: never, RollBackTo: spec(1)})
	n0 := tp.l.next(t)
	n0.markReady()
	n1 := tp.l.next(t)
	n0.crash()
	waitFor(t, "the unready new worker retired", func() bool { return len(n1.sigs()) > 0 })
	r0 := tp.l.next(t)
	if r0.slot != 0 || r0.gen != 1 {
		t.Fatalf("launched slot %d generation %d", r0.slot, r0.gen)
	}
	r0.markReady()
	rb := asRolledBack(t, recvErr(t, errc))
	if rb.Slots != 1 {
		t.Fatalf("%+v", rb)
	}
	for i, g := range tp.currentGens() {
		if g != 1 {
			t.Errorf("slot %d runs generation %d", i, g)
		}
	}
	untouched(t, old[1:])
}

// A start failure after some slots were rolled rolls them back too
// (probation or not); one at the first slot rolled nothing back: a
// *StartError.
func TestRollWithStartFailureRollsBack(t *testing.T) {
	tp := newTestPool(t, 2, nil)
	old := tp.start(t, spec(1))
	errc := tp.rollWith(spec(2), RollOptions{RollBackTo: spec(1)})
	n0 := tp.l.next(t)
	n0.markReady()
	tp.l.next(t).crash()
	r0 := tp.l.next(t)
	if r0.slot != 0 || r0.gen != 1 {
		t.Fatalf("launched slot %d generation %d", r0.slot, r0.gen)
	}
	r0.markReady()
	rb := asRolledBack(t, recvErr(t, errc))
	if se := asStartError(t, rb); se.Slot != 1 || rb.Slots != 1 {
		t.Fatalf("%+v %+v", rb, se)
	}
	waitFor(t, "slot 0's new worker retired", n0.stoppedGracefully)
	untouched(t, old[1:])

	errc = tp.rollWith(spec(3), RollOptions{MinUptime: never, RollBackTo: spec(1)})
	tp.l.next(t).crash()
	err := recvErr(t, errc)
	if se := asStartError(t, err); se.Slot != 0 || errors.As(err, new(*RolledBackError)) {
		t.Fatalf("%v", err)
	}
	tp.l.noLaunch(t, 50*time.Millisecond)
}

// A newer deploy asked for ends the probation at once, as passed.
func TestRollWithEndProbation(t *testing.T) {
	tp := newTestPool(t, 2, nil)
	old := tp.start(t, spec(1))
	end := make(chan struct{})
	errc := tp.rollWith(spec(2), RollOptions{MinUptime: never, RollBackTo: spec(1), EndProbation: end})
	tp.rollAll(t, 2, 2)
	tp.waitReaped(t, old[0])
	notReturned(t, errc, "RollWith")
	close(end)
	if err := recvErr(t, errc); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the standing worker retired", old[1].stoppedGracefully)
}

// The roll-back itself failing (the old spec does not start) leaves the
// slots not rolled back yet with their new worker, restarting with the
// old spec; the standing worker has its slot back all the same.
func TestRollWithRollBackFails(t *testing.T) {
	tp := newTestPool(t, 3, nil)
	old := tp.start(t, spec(1))
	errc := tp.rollWith(spec(2), RollOptions{MinUptime: never, RollBackTo: spec(1), Standby: true})
	fresh := tp.rollAll(t, 3, 2)
	fresh[1].crash()
	// Slot 1 is refilled with generation 1, which fails too.
	r1 := tp.l.next(t)
	if r1.slot != 1 || r1.gen != 1 {
		t.Fatalf("refill of slot %d generation %d", r1.slot, r1.gen)
	}
	r1.crash()
	rb := asRolledBack(t, recvErr(t, errc))
	if se := asStartError(t, rb.Err); se.Slot != 1 || se.Pid != r1.pid {
		t.Fatalf("%+v", rb)
	}
	cur := tp.current()
	if cur[0].Pid != fresh[0].pid || cur[2].Pid != old[2].pid {
		t.Fatalf("slots 0 and 2 held by %d and %d, want the new worker %d and the old one %d",
			cur[0].Pid, cur[2].Pid, fresh[0].pid, old[2].pid)
	}
	fresh[0].crash()
	for {
		p := tp.l.next(t)
		if p.gen != 1 {
			t.Fatalf("generation %d restarted in slot %d", p.gen, p.slot)
		}
		if p.slot == 0 {
			break
		}
	}
}

// The roll-back keeps N workers ready whenever it can: a slot whose new
// worker died is refilled, and ready, before the standing worker takes
// the last slot back and that slot's (live) new worker retires.
func TestRollWithRollBackKeepsCapacity(t *testing.T) {
	const n = 3
	tp := newTestPool(t, n, nil)
	old := tp.start(t, spec(1))
	errc := tp.rollWith(spec(2), RollOptions{MinUptime: never, RollBackTo: spec(1), Standby: true})
	fresh := tp.rollAll(t, n, 2)
	fresh[0].crash()
	r0 := tp.l.next(t)
	if r0.slot != 0 || r0.gen != 1 {
		t.Fatalf("refill of slot %d generation %d", r0.slot, r0.gen)
	}
	for _, p := range fresh[1:] {
		if len(p.sigs()) != 0 {
			t.Fatalf("new worker %d retired before the dead slot was refilled", p.pid)
		}
	}
	if c := tp.current()[2]; c.Pid != fresh[2].pid {
		t.Fatalf("slot 2 held by %d before the refill was ready", c.Pid)
	}
	r0.markReady()
	waitFor(t, "the standing worker back in slot 2", func() bool { return tp.current()[2].Pid == old[2].pid })
	waitFor(t, "slot 2's new worker retired", fresh[2].stoppedGracefully)
	r1 := tp.l.next(t)
	if r1.slot != 1 || r1.gen != 1 {
		t.Fatalf("launched slot %d generation %d", r1.slot, r1.gen)
	}
	stop := tp.watchServing(t)
	r1.markReady()
	asRolledBack(t, recvErr(t, errc))
	stop()
	for i, g := range tp.currentGens() {
		if g != 1 {
			t.Errorf("slot %d runs generation %d", i, g)
		}
	}
}

func TestSpecsListsEverySlotsSpec(t *testing.T) {
	tp := newTestPool(t, 2, nil)
	if n := len(tp.Specs()); n != 0 {
		t.Fatalf("%d specs before start", n)
	}
	s1 := spec(1)
	tp.start(t, s1)
	if got := tp.Specs(); len(got) != 2 || got[0] != s1 || got[1] != s1 {
		t.Fatalf("specs %v", got)
	}
}

// Without Standby, a new worker that fails probation after the roll rolls
// every slot back: its slot, empty, is refilled at once; the others, whose
// old workers retired with the roll, get a worker of the old spec one at
// a time, start-new-then-retire.
func TestRollWithProbationFailureRefillsAndRollsBack(t *testing.T) {
	const n = 3
	tp := newTestPool(t, n, nil)
	old := tp.start(t, spec(1))
	errc := tp.rollWith(spec(2), RollOptions{MinUptime: never, RollBackTo: spec(1)})
	fresh := tp.rollAll(t, n, 2)
	for _, o := range old {
		waitFor(t, "every old worker retired", o.stoppedGracefully)
	}
	fresh[1].exitWith(Exit{Status: "exit status 4", Code: 4})

	r1 := tp.l.next(t)
	if r1.slot != 1 || r1.gen != 1 {
		t.Fatalf("first launch after the failure: slot %d generation %d, want the dead slot 1 refilled with 1", r1.slot, r1.gen)
	}
	r1.markReady()
	for _, slot := range []int{0, 2} {
		p := tp.l.next(t)
		if p.slot != slot || p.gen != 1 {
			t.Fatalf("launched slot %d generation %d, want slot %d generation 1", p.slot, p.gen, slot)
		}
		if len(fresh[slot].sigs()) != 0 {
			t.Fatalf("slot %d's new worker retired before its replacement was ready", slot)
		}
		stop := tp.watchServing(t)
		p.markReady()
		waitFor(t, "the new worker retired", fresh[slot].stoppedGracefully)
		stop()
	}
	rb := asRolledBack(t, recvErr(t, errc))
	var pe *ProbationError
	if !errors.As(rb, &pe) || pe.Slot != 1 || pe.Exit.Code != 4 || rb.Slots != n || rb.Err != nil {
		t.Fatalf("%+v", rb)
	}
	for i, g := range tp.currentGens() {
		if g != 1 {
			t.Errorf("slot %d runs generation %d", i, g)
		}
	}
	if n := tp.logs.FilterMessage("worker reinstated").Len(); n != 0 {
		t.Errorf("%d workers reinstated, want none: none stood by", n)
	}
}

// Without Standby, a pool of one worker retires the old worker as soon as
// the new one is ready; a new worker that dies within its probation has
// its slot refilled with the old spec at once (the listening socket, which
// the primary holds, queues the connections meanwhile).
func TestRollWithProbationOneWorkerRefilledAtOnce(t *testing.T) {
	tp := newTestPool(t, 1, nil)
	old := tp.start(t, spec(1))
	errc := tp.rollWith(spec(2), RollOptions{MinUptime: never, RollBackTo: spec(1)})
	fresh := tp.rollAll(t, 1, 2)
	waitFor(t, "the old worker retired", old[0].stoppedGracefully)
	fresh[0].crash()
	r := tp.l.next(t)
	if r.slot != 0 || r.gen != 1 {
		t.Fatalf("refill of slot %d generation %d, want slot 0 generation 1", r.slot, r.gen)
	}
	notReturned(t, errc, "RollWith")
	r.markReady()
	rb := asRolledBack(t, recvErr(t, errc))
	if rb.Slots != 1 || rb.Err != nil {
		t.Fatalf("%+v", rb)
	}
	if c := tp.current()[0]; c.Pid != r.pid || !c.Ready {
		t.Fatalf("slot 0 held by %+v, want the refill %d, ready", c, r.pid)
	}
	if ready, size := tp.ReadySlots(); ready != 1 || size != 1 {
		t.Fatalf("ReadySlots %d of %d", ready, size)
	}
	tp.l.noLaunch(t, 50*time.Millisecond)
}

// A new worker that exits after its own probation, while the roll's still
// runs (a restart of another slot made it longer), is an ordinary crash:
// its slot is restarted with the new spec, the deploy finishes, and every
// slot is served at the end. With Standby the standing worker does not
// take the slot back (nothing failed, so it retires at the end, and would
// leave the slot empty with nothing to restart it).
func TestRollWithExitAfterOwnProbationRestarts(t *testing.T) {
	for _, standby := range []bool{false, true} {
		t.Run(fmt.Sprintf("standby=%v", standby), func(t *testing.T) {
			const minUptime = time.Second
			tp := newTestPool(t, 2, nil)
			old := tp.start(t, spec(1))
			errc := tp.rollWith(spec(2), RollOptions{MinUptime: minUptime, RollBackTo: spec(1), Standby: standby})
			n0 := tp.l.next(t)
			n0.markReady()
			n1 := tp.l.next(t)
			// Slot 0's new worker passes its own probation before slot 1's
			// is ready.
			waitFor(t, "slot 0's new worker past its probation", func() bool {
				c, ok := tp.current()[0]
				return ok && c.Pid == n0.pid && time.Since(c.ReadyAt) > minUptime
			})
			n1.markReady()
			waitFor(t, "slot 1's new worker installed", func() bool { return tp.current()[1].Pid == n1.pid })
			ready1 := tp.current()[1].ReadyAt
			// Slot 0's new worker crashes, past its probation: restarted, and
			// the restart, ready later, makes the roll's probation longer.
			n0.crash()
			r0 := tp.l.next(t)
			if r0.slot != 0 || r0.gen != 2 {
				t.Fatalf("restart of slot %d generation %d", r0.slot, r0.gen)
			}
			time.Sleep(minUptime * 8 / 10)
			r0.markReady()
			// Slot 1's new worker exits past its own probation, within the
			// roll's.
			waitFor(t, "slot 1's new worker past its probation", func() bool { return time.Since(ready1) > minUptime })
			notReturned(t, errc, "RollWith")
			n1.crash()
			r1 := tp.l.next(t)
			if r1.slot != 1 || r1.gen != 2 {
				t.Fatalf("after slot 1's new worker exited: launched slot %d generation %d, want a restart of slot 1 generation 2", r1.slot, r1.gen)
			}
			r1.markReady()
			if err := recvErr(t, errc); err != nil {
				t.Fatalf("RollWith: %v", err)
			}
			if n := tp.logs.FilterMessage("worker failed probation").Len(); n != 0 {
				t.Errorf("%d \"worker failed probation\"", n)
			}
			waitFor(t, "the last slot's old worker retired", old[1].stoppedGracefully)
			if ready, size := tp.ReadySlots(); ready != 2 || size != 2 {
				t.Fatalf("ReadySlots %d of %d after the deploy", ready, size)
			}
			for i, g := range tp.currentGens() {
				if g != 2 {
					t.Errorf("slot %d runs generation %d", i, g)
				}
			}
		})
	}
}
