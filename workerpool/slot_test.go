package workerpool

import "testing"

func TestSlotTransitions(t *testing.T) {
	var s slot
	w1, w2, w3 := &worker{}, &worker{}, &worker{}
	spec := &Spec{Generation: 1}
	want := func(st slotState, cur *worker) {
		t.Helper()
		if s.state != st || s.cur != cur {
			t.Fatalf("state %v (cur %p), want %v (cur %p)", s.state, s.cur, st, cur)
		}
		if s.vacant() != (st == slotEmpty || st == slotRestarting) {
			t.Fatalf("%v: vacant() = %v", st, s.vacant())
		}
	}
	want(slotEmpty, nil)
	s.hold(w1, spec, slotStarting)
	want(slotStarting, w1)
	if s.lost(w2, false) {
		t.Fatal("a worker that does not hold the slot was lost")
	}
	s.serve()
	want(slotServing, w1)
	if !s.lost(w1, false) {
		t.Fatal("a serving slot that lost its worker is not restarting")
	}
	want(slotRestarting, nil)
	s.hold(w2, spec, slotServing)
	want(slotServing, w2)
	if old := s.handOver(); old != w2 {
		t.Fatalf("handOver returned %p, want %p", old, w2)
	}
	want(slotRemote, nil)
	if !s.reclaim() {
		t.Fatal("a remote slot was not reclaimed")
	}
	want(slotRestarting, nil)
	if s.reclaim() {
		t.Fatal("a slot that is not remote was reclaimed")
	}
	s.adopt()
	if old, wasRemote := s.install(w3, spec); old != nil || !wasRemote {
		t.Fatalf("install over a remote slot: old %p, wasRemote %v", old, wasRemote)
	}
	want(slotServing, w3)
	s.failures, s.restarts = 3, 4
	if old := s.clear(); old != w3 || s.failures != 0 || s.restarts != 0 || s.spec != nil {
		t.Fatalf("clear: old %p, slot %+v", old, s)
	}
	want(slotEmpty, nil)

	// A worker of an unfinished Start, or of a pool shutting down, leaves
	// its slot empty: nothing restarts it.
	s.hold(w1, spec, slotStarting)
	if s.lost(w1, false) {
		t.Fatal("a starting slot asks for a restart")
	}
	want(slotEmpty, nil)
	s.hold(w1, spec, slotServing)
	if s.lost(w1, true) {
		t.Fatal("a slot of a closing pool asks for a restart")
	}
	want(slotEmpty, nil)
	s.hold(w1, spec, slotStarting)
	s.drop(w1)
	want(slotEmpty, nil)
}
