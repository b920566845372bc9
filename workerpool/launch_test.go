package workerpool

import (
	"context"
	"errors"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"
)

// gatedLauncher holds every Launch until the test lets it through: the
// pool is then seen while a worker is being forked.
type gatedLauncher struct {
	*fakeLauncher
	entered chan int      // a Launch began, for this slot
	gate    chan struct{} // one receive lets one Launch through
	err     error         // if set, the Launch let through fails with it
}

func (l *gatedLauncher) Launch(slot int, spec *Spec, _ []int) (Process, error) {
	l.entered <- slot
	<-l.gate
	if l.err != nil {
		return nil, l.err
	}
	return l.fakeLauncher.Launch(slot, spec, nil)
}

// gate makes every launch of tp wait for a send on the gate.
func gate(t *testing.T, tp *testPool) *gatedLauncher {
	g := &gatedLauncher{fakeLauncher: tp.l, entered: make(chan int, 100), gate: make(chan struct{})}
	tp.cfg.Launcher = g
	t.Cleanup(func() { close(g.gate) })
	return g
}

// entered waits until a launch is in progress and returns its slot.
func (l *gatedLauncher) waitEntered(t *testing.T) int {
	t.Helper()
	select {
	case i := <-l.entered:
		return i
	case <-time.After(waitLimit):
		t.Fatal("no launch began")
		return -1
	}
}

// returns fails the test unless fn returns within waitLimit.
func returns(t *testing.T, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { fn(); close(done) }()
	select {
	case <-done:
	case <-time.After(waitLimit):
		t.Fatalf("%s did not return while a worker was being launched", what)
	}
}

// What status, /readyz and a worker's exit need of the pool does not wait
// for a fork: Workers, ReadySlots, Size and an exit's handling go on while
// a Launch is blocked.
func TestPoolAnswersWhileALaunchIsBlocked(t *testing.T) {
	tp := newTestPool(t, 2, nil)
	old := tp.start(t, spec(1))
	g := gate(t, tp)
	errc := make(chan error, 1)
	go func() { errc <- tp.Roll(context.Background(), spec(2), nil, nil) }()
	if i := g.waitEntered(t); i != 0 {
		t.Fatalf("roll launched slot %d first", i)
	}
	returns(t, "Workers", func() {
		if ws := tp.Workers(); len(ws) != 2 {
			t.Errorf("Workers() = %+v during the launch, want the 2 old ones", ws)
		}
	})
	returns(t, "ReadySlots", func() {
		if r, n := tp.ReadySlots(); r != 2 || n != 2 {
			t.Errorf("ReadySlots() = %d, %d during the launch", r, n)
		}
	})
	returns(t, "Size", func() { tp.Size() })
	// Slot 1's worker crashes meanwhile: its exit is handled, and its
	// restart launches beside the roll's (both wait at the gate).
	old[1].crash()
	tp.waitReaped(t, old[1])
	if i := g.waitEntered(t); i != 1 {
		t.Fatalf("launch for slot %d, want slot 1's restart", i)
	}
	g.gate <- struct{}{}
	g.gate <- struct{}{}
	for range 2 {
		tp.l.next(t).markReady()
	}
	if g.waitEntered(t) != 1 {
		t.Fatal("the roll did not go on to slot 1")
	}
	g.gate <- struct{}{}
	tp.l.next(t).markReady()
	if err := recvErr(t, errc); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "2 serving workers of generation 2", func() bool {
		cur := tp.current()
		return len(cur) == 2 && cur[0].Generation == 2 && cur[1].Generation == 2 && checkServing(tp.Workers(), 2) == nil
	})
}

// A Shutdown that begins while a worker is being launched waits for the
// launch and retires the new worker; none is started after it.
func TestShutdownDuringALaunchRetiresTheNewWorker(t *testing.T) {
	tp := newTestPool(t, 1, nil)
	old := tp.start(t, spec(1))
	g := gate(t, tp)
	errc := make(chan error, 1)
	go func() { errc <- tp.Roll(context.Background(), spec(2), nil, nil) }()
	g.waitEntered(t)
	shut := make(chan struct{})
	go func() { tp.Shutdown(); close(shut) }()
	waitFor(t, "the old worker retired", func() bool { return old[0].exited() })
	select {
	case <-shut:
		t.Fatal("Shutdown returned while a launch was in progress")
	case <-time.After(20 * time.Millisecond):
	}
	g.gate <- struct{}{}
	p := tp.l.next(t)
	select {
	case <-shut:
	case <-time.After(waitLimit):
		t.Fatal("Shutdown did not return once the launched worker was retired")
	}
	if !p.stoppedGracefully() {
		t.Fatalf("the worker launched during Shutdown: signals %v, exited %v", p.sigs(), p.exited())
	}
	if err := recvErr(t, errc); err == nil {
		t.Fatal("the roll succeeded during a shutdown")
	}
}

// A restart whose launch loses its slot to a roll meanwhile leaves the
// slot to the roll's worker and retires its own; one whose launch fails
// leaves the slot restarting, and it is tried again.
func TestRestartLaunchRacingARoll(t *testing.T) {
	tp := newTestPool(t, 1, nil)
	old := tp.start(t, spec(1))
	g := gate(t, tp)
	old[0].crash()
	g.waitEntered(t) // the restart, held at the gate
	tp.cfg.Launcher = tp.l
	tp.l.setAutoReady(0)
	errc := make(chan error, 1)
	go func() { errc <- tp.Roll(context.Background(), spec(2), nil, nil) }()
	if err := recvErr(t, errc); err != nil {
		t.Fatal(err)
	}
	rolled := tp.l.next(t)
	g.gate <- struct{}{}
	restarted := tp.l.next(t)
	if restarted.gen != 1 {
		t.Fatalf("restart launched generation %d", restarted.gen)
	}
	waitFor(t, "the restart's worker retired", restarted.stoppedGracefully)
	if cur := tp.current(); cur[0].Pid != rolled.pid {
		t.Fatalf("slot 0 held by %+v, want the roll's worker %d", cur[0], rolled.pid)
	}

	// A failed launch of a restart: the slot is restarting again.
	tp.l.setAutoReady()
	g = gate(t, tp)
	g.err = errors.New("fork failed")
	rolled.crash()
	g.waitEntered(t)
	g.gate <- struct{}{}
	g.waitEntered(t) // the retry, after the backoff
	g.err = nil
	g.gate <- struct{}{}
	retried := tp.l.next(t)
	retried.markReady()
	waitFor(t, "slot 0 served again", func() bool { return checkServing(tp.Workers(), 1) == nil })
}

// slowLauncher stands for a fork+exec that takes delay (a primary with a
// large heap or environment, a loaded machine).
type slowLauncher struct {
	Launcher
	delay time.Duration
}

func (l slowLauncher) Launch(slot int, spec *Spec, _ []int) (Process, error) {
	time.Sleep(l.delay)
	return l.Launcher.Launch(slot, spec, nil)
}

// BenchmarkPoolReadsDuringSlowLaunches measures what `handoff status`
// (Workers) and /readyz (ReadySlots) wait for the pool during a deploy of
// 8 workers whose fork+exec takes 20ms each: one op is one roll; the
// reported percentiles are of one Workers+ReadySlots call.
func BenchmarkPoolReadsDuringSlowLaunches(b *testing.B) {
	const (
		n     = 8
		delay = 20 * time.Millisecond
	)
	fl := newFakeLauncher(syscall.SIGTERM)
	slots := make([]int, n)
	for i := range slots {
		slots[i] = i
	}
	fl.setAutoReady(slots...)
	p := New(Config{Size: n, Launcher: slowLauncher{fl, delay}, ReadyTimeout: time.Minute, DrainTimeout: time.Minute})
	defer p.Shutdown()
	if err := p.Start(context.Background(), spec(1)); err != nil {
		b.Fatal(err)
	}
	var (
		mu   sync.Mutex
		lats []time.Duration
	)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			begin := time.Now()
			p.Workers()
			p.ReadySlots()
			d := time.Since(begin)
			mu.Lock()
			lats = append(lats, d)
			mu.Unlock()
			time.Sleep(100 * time.Microsecond)
		}
	}()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := p.Roll(context.Background(), spec(2+i), nil, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	close(stop)
	<-done
	slices.Sort(lats)
	q := func(f float64) float64 { return float64(lats[int(f*float64(len(lats)-1))].Microseconds()) }
	b.ReportMetric(q(0.5), "p50-µs")
	b.ReportMetric(q(0.99), "p99-µs")
	b.ReportMetric(q(1), "max-µs")
	b.ReportMetric(float64(len(lats))/float64(b.N), "reads/op")
}
