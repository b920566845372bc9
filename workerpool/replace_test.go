package workerpool

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Replace starts the new worker first and retires the old one only once
// the new one is ready: the slot is never without a ready worker.
func TestReplaceStartsNewThenRetiresOld(t *testing.T) {
	const n = 2
	tp := newTestPool(t, n, nil)
	old := tp.start(t, spec(1))
	stop := tp.watchServing(t)

	errc := make(chan error, 1)
	go func() { errc <- tp.Replace(context.Background(), 1, old[1].pid, "memory", 0) }()
	p := tp.l.next(t)
	if p.slot != 1 || p.gen != 1 {
		t.Fatalf("launched slot %d generation %d, want slot 1 generation 1", p.slot, p.gen)
	}
	notReturned(t, errc, "Replace")
	if s := old[1].sigs(); len(s) != 0 {
		t.Fatalf("old worker signalled %v before its replacement was ready", s)
	}
	if c := tp.current()[1]; c.Pid != old[1].pid {
		t.Fatalf("slot 1 held by %d before the new worker was ready", c.Pid)
	}
	p.markReady()
	if err := recvErr(t, errc); err != nil {
		t.Fatal(err)
	}
	tp.waitReaped(t, old[1])
	stop()
	if !old[1].stoppedGracefully() {
		t.Fatalf("old worker: signals %v, kills %d; want the stop signal only", old[1].sigs(), old[1].killCount())
	}
	if c := tp.current()[1]; c.Pid != p.pid {
		t.Fatalf("slot 1 held by %d, want the new worker %d", c.Pid, p.pid)
	}
	untouched(t, old[:1])
	if e := tp.logs.FilterMessage("worker replacing").All(); len(e) != 1 || e[0].ContextMap()["reason"] != "memory" {
		t.Fatalf("\"worker replacing\" events: %v", e)
	}
}

// A worker that ignores the stop signal (hung) is killed after the short
// drain Replace was given, once its replacement is ready.
func TestReplaceHungKillsOldAfterShortDrain(t *testing.T) {
	tp := newTestPool(t, 1, nil) // DrainTimeout: never
	old := tp.start(t, spec(1))
	old[0].setIgnoreStop(true)
	tp.l.setAutoReady(0)
	if err := tp.Replace(context.Background(), 0, old[0].pid, "watchdog", 20*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	tp.waitReaped(t, old[0])
	if s := old[0].sigs(); old[0].killCount() != 1 || len(s) != 1 || s[0] != syscall.SIGTERM {
		t.Fatalf("hung worker: signals %v, kills %d; want the stop signal, then one SIGKILL", s, old[0].killCount())
	}
	evs := tp.l.ev.all()
	ready, kill := -1, -1
	for i, e := range evs {
		switch {
		case strings.HasPrefix(e, "ready pid=") && e != fmt.Sprintf("ready pid=%d", old[0].pid):
			ready = i
		case e == fmt.Sprintf("kill pid=%d", old[0].pid):
			kill = i
		}
	}
	if ready < 0 || kill < ready {
		t.Fatalf("the hung worker was killed before its replacement was ready:\n%s", strings.Join(evs, "\n"))
	}
}

// A replacement that fails leaves the old worker in place.
func TestReplaceFailureKeepsOldWorker(t *testing.T) {
	tp := newTestPool(t, 1, func(c *Config) { c.DrainTimeout = 50 * time.Millisecond })
	old := tp.start(t, spec(1))
	errc := make(chan error, 1)
	go func() { errc <- tp.Replace(context.Background(), 0, old[0].pid, "memory", 0) }()
	tp.l.next(t).crash()
	se := asStartError(t, recvErr(t, errc))
	if se.Slot != 0 || se.Reason != "exited" {
		t.Fatalf("error %v", se)
	}
	untouched(t, old)
	if c := tp.current()[0]; c.Pid != old[0].pid {
		t.Fatalf("slot 0 held by %d, want the old worker %d", c.Pid, old[0].pid)
	}
}

// Replace of a worker that no longer holds its slot does nothing.
func TestReplaceStaleWorker(t *testing.T) {
	tp := newTestPool(t, 2, nil)
	old := tp.start(t, spec(1))
	for _, tc := range []struct {
		slot, pid int
	}{{0, old[1].pid}, {1, 99999}} {
		if err := tp.Replace(context.Background(), tc.slot, tc.pid, "memory", 0); !errors.Is(err, ErrStale) {
			t.Fatalf("Replace(slot %d, pid %d): %v, want ErrStale", tc.slot, tc.pid, err)
		}
	}
	if err := tp.Replace(context.Background(), 5, old[0].pid, "memory", 0); err == nil || errors.Is(err, ErrStale) {
		t.Fatalf("Replace of slot 5: %v", err)
	}
	tp.l.noLaunch(t, 20*time.Millisecond)
	untouched(t, old)
}

// The old worker crashes while its replacement starts: the replacement
// takes the slot, and the pending restart is cancelled.
func TestReplaceWhenOldCrashesMeanwhile(t *testing.T) {
	tp := newTestPool(t, 1, func(c *Config) { c.BackoffMin, c.BackoffMax = time.Hour, time.Hour })
	old := tp.start(t, spec(1))
	errc := make(chan error, 1)
	go func() { errc <- tp.Replace(context.Background(), 0, old[0].pid, "memory", 0) }()
	p := tp.l.next(t)
	old[0].crash()
	// The first restart is immediate: it takes the slot first.
	r := tp.l.next(t)
	r.markReady()
	p.markReady()
	if err := recvErr(t, errc); !errors.Is(err, ErrStale) {
		t.Fatalf("Replace: %v, want ErrStale", err)
	}
	tp.waitReaped(t, p)
	if c := tp.current()[0]; c.Pid != r.pid {
		t.Fatalf("slot 0 held by %d, want the restarted worker %d", c.Pid, r.pid)
	}
}

// Ready counts slots with a ready, non-draining current worker, and slots
// handed over to another primary.
func TestReadyCountsServedSlots(t *testing.T) {
	tp := newTestPool(t, 3, nil)
	if r, n := tp.ReadySlots(); r != 0 || n != 3 {
		t.Fatalf("empty pool: Ready %d/%d", r, n)
	}
	procs := tp.start(t, spec(1))
	if r, n := tp.ReadySlots(); r != 3 || n != 3 {
		t.Fatalf("started: Ready %d/%d", r, n)
	}
	tp.HandOver(2)
	if r, _ := tp.ReadySlots(); r != 3 {
		t.Fatalf("slot 2 handed over: Ready %d, want 3", r)
	}
	procs[0].crash()
	waitFor(t, "slot 0 to be unready", func() bool { r, _ := tp.ReadySlots(); return r == 2 })
}

// recorder is an Observer that keeps what it was told.
type recorder struct {
	mu  sync.Mutex
	evs []string
}

func (r *recorder) add(s string) {
	r.mu.Lock()
	r.evs = append(r.evs, s)
	r.mu.Unlock()
}

func (r *recorder) WorkerStarted(slot int)                { r.add(fmt.Sprintf("started %d", slot)) }
func (r *recorder) WorkerReady(slot int, _ time.Duration) { r.add(fmt.Sprintf("ready %d", slot)) }
func (r *recorder) WorkerRestarted(slot int)              { r.add(fmt.Sprintf("restarted %d", slot)) }
func (r *recorder) WorkerExited(slot int, cause string) {
	r.add(fmt.Sprintf("exited %d %s", slot, cause))
}

func (r *recorder) sorted() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := append([]string(nil), r.evs...)
	sort.Strings(s)
	return strings.Join(s, ", ")
}

// The observer hears of every start, readiness, restart and exit, with the
// exit's cause: crashed, retired or killed.
func TestObserverSeesLifecycle(t *testing.T) {
	rec := &recorder{}
	tp := newTestPool(t, 2, func(c *Config) {
		c.Observer = rec
		c.DrainTimeout = 20 * time.Millisecond
	})
	procs := tp.start(t, spec(1))
	procs[0].crash()
	r := tp.l.next(t)
	r.markReady()
	tp.waitReaped(t, procs[0])
	procs[1].setIgnoreStop(true)
	tp.HandOver(1)
	tp.waitReaped(t, procs[1])
	tp.HandOver(0)
	tp.waitReaped(t, r)
	want := strings.Join([]string{
		"exited 0 crashed", "exited 0 retired", "exited 1 killed",
		"ready 0", "ready 0", "ready 1", "restarted 0",
		"started 0", "started 0", "started 1"}, ", ")
	if got := rec.sorted(); got != want {
		t.Fatalf("observed %s\nwant     %s", got, want)
	}
	if procs[1].killCount() != 1 || len(procs[1].sigs()) != 1 || procs[1].sigs()[0] != syscall.SIGTERM {
		t.Fatalf("slot 1: signals %v, kills %d", procs[1].sigs(), procs[1].killCount())
	}
}
