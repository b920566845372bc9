package workerpool

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// The pool is driven here through fakes: each fake worker becomes ready or
// exits only when the test says so, so every step of a start or a roll can
// be checked in turn.

// waitLimit bounds every wait for something the pool does on its own.
const waitLimit = 5 * time.Second

// never is a timeout that a test does not mean to reach.
const never = time.Minute

// events is the ordered record of what happened to every fake worker.
type events struct {
	mu  sync.Mutex
	evs []string
}

func (e *events) add(format string, a ...any) {
	e.mu.Lock()
	e.evs = append(e.evs, fmt.Sprintf(format, a...))
	e.mu.Unlock()
}

func (e *events) all() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.evs...)
}

// index is the position of the first event equal to ev, or -1.
func (e *events) index(ev string) int {
	for i, x := range e.all() {
		if x == ev {
			return i
		}
	}
	return -1
}

type fakeLauncher struct {
	stop     syscall.Signal
	ev       *events
	launched chan *fakeProc

	mu         sync.Mutex
	nextPid    int
	procs      []*fakeProc
	failNext   int          // the next failNext launches fail
	failSlot   int          // the next launch for this slot fails (-1: none)
	ignoreStop bool         // new workers ignore the stop signal
	autoReady  map[int]bool // new workers of these slots are ready at once
}

func newFakeLauncher(stop syscall.Signal) *fakeLauncher {
	return &fakeLauncher{stop: stop, ev: &events{}, launched: make(chan *fakeProc, 1000), nextPid: 1000, failSlot: -1}
}

func (l *fakeLauncher) Launch(slot int, spec *Spec, _ []int) (Process, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.failNext > 0 || l.failSlot == slot {
		if l.failSlot == slot {
			l.failSlot = -1
		} else {
			l.failNext--
		}
		l.ev.add("launch-failed slot=%d", slot)
		return nil, errors.New("fork failed")
	}
	l.nextPid++
	p := &fakeProc{l: l, pid: l.nextPid, slot: slot, gen: spec.Generation, spec: spec,
		ready: make(chan struct{}), done: make(chan struct{}), ignoreStop: l.ignoreStop, started: time.Now()}
	l.procs = append(l.procs, p)
	l.ev.add("launch slot=%d gen=%d pid=%d", slot, spec.Generation, p.pid)
	if l.autoReady[slot] {
		p.markReady()
	}
	l.launched <- p
	return p, nil
}

func (l *fakeLauncher) setIgnoreStop(v bool) {
	l.mu.Lock()
	l.ignoreStop = v
	l.mu.Unlock()
}

// setAutoReady makes the workers launched from now on for slots ready at
// once: a test can then meet a short ReadyTimeout however slowly it runs.
func (l *fakeLauncher) setAutoReady(slots ...int) {
	l.mu.Lock()
	l.autoReady = map[int]bool{}
	for _, i := range slots {
		l.autoReady[i] = true
	}
	l.mu.Unlock()
}

func (l *fakeLauncher) setFailNext(n int) {
	l.mu.Lock()
	l.failNext = n
	l.mu.Unlock()
}

func (l *fakeLauncher) setFailSlot(slot int) {
	l.mu.Lock()
	l.failSlot = slot
	l.mu.Unlock()
}

func (l *fakeLauncher) all() []*fakeProc {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*fakeProc(nil), l.procs...)
}

// next returns the next worker launched, failing the test if none comes.
func (l *fakeLauncher) next(t *testing.T) *fakeProc {
	t.Helper()
	select {
	case p := <-l.launched:
		return p
	case <-time.After(waitLimit):
		t.Fatal("no worker was launched")
		return nil
	}
}

// noLaunch fails the test if a worker is launched within d. It proves an
// absence, so it has to wait; d is kept short.
func (l *fakeLauncher) noLaunch(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case p := <-l.launched:
		t.Fatalf("unexpected launch of slot %d (pid %d)", p.slot, p.pid)
	case <-time.After(d):
	}
}

type fakeProc struct {
	l                   *fakeLauncher
	pid, slot, gen      int
	spec                *Spec
	ready, done         chan struct{}
	readyOnce, doneOnce sync.Once
	started             time.Time

	mu         sync.Mutex
	ignoreStop bool
	exit       Exit
	signals    []syscall.Signal
	kills      int
}

func (p *fakeProc) Pid() int               { return p.pid }
func (p *fakeProc) Ready() <-chan struct{} { return p.ready }
func (p *fakeProc) Done() <-chan struct{}  { return p.done }

func (p *fakeProc) Exit() Exit {
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exit
}

func (p *fakeProc) Signal(sig syscall.Signal) error {
	if p.exited() {
		return os.ErrProcessDone
	}
	p.mu.Lock()
	p.signals = append(p.signals, sig)
	ignore := p.ignoreStop
	p.mu.Unlock()
	p.l.ev.add("signal pid=%d sig=%d", p.pid, int(sig))
	if sig == p.l.stop && !ignore {
		p.exitWith(Exit{Status: "exit status 0", Code: 0})
	}
	return nil
}

func (p *fakeProc) Kill() {
	p.mu.Lock()
	p.kills++
	p.mu.Unlock()
	p.l.ev.add("kill pid=%d", p.pid)
	p.exitWith(Exit{Status: "signal: killed", Code: -1})
}

func (p *fakeProc) markReady() {
	p.readyOnce.Do(func() {
		p.l.ev.add("ready pid=%d", p.pid)
		close(p.ready)
	})
}

// exitWith ends the worker, unless it has ended already.
func (p *fakeProc) exitWith(e Exit) {
	p.doneOnce.Do(func() {
		if e.Uptime == 0 {
			e.Uptime = time.Since(p.started)
		}
		p.mu.Lock()
		p.exit = e
		p.mu.Unlock()
		p.l.ev.add("exit pid=%d", p.pid)
		close(p.done)
	})
}

func (p *fakeProc) crash() {
	p.exitWith(Exit{Status: "exit status 1", Code: 1, Uptime: time.Millisecond})
}

func (p *fakeProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *fakeProc) isReady() bool {
	select {
	case <-p.ready:
		return true
	default:
		return false
	}
}

func (p *fakeProc) sigs() []syscall.Signal {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]syscall.Signal(nil), p.signals...)
}

// untouched fails the test if any of the old workers was signalled or
// has exited.
func untouched(t *testing.T, old []*fakeProc) {
	t.Helper()
	for _, o := range old {
		if len(o.sigs()) != 0 || o.exited() {
			t.Fatalf("old worker %d touched: signals %v", o.pid, o.sigs())
		}
	}
}

// stoppedGracefully reports whether p was retired the way every worker is:
// the stop signal, and no SIGKILL since it drained in time.
func (p *fakeProc) stoppedGracefully() bool {
	s := p.sigs()
	return p.exited() && p.killCount() == 0 && len(s) == 1 && s[0] == p.l.stop
}

func (p *fakeProc) killCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.kills
}

func (p *fakeProc) setIgnoreStop(v bool) {
	p.mu.Lock()
	p.ignoreStop = v
	p.mu.Unlock()
}

type testPool struct {
	*Pool
	l    *fakeLauncher
	logs *observer.ObservedLogs
}

func newTestPool(t *testing.T, size int, edit func(*Config)) *testPool {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	cfg := Config{
		Size:         size,
		ReadyTimeout: never,
		DrainTimeout: never,
		StopSignal:   syscall.SIGTERM,
		BackoffMin:   20 * time.Millisecond,
		BackoffMax:   80 * time.Millisecond,
		StableAfter:  time.Hour,
		Logger:       zap.New(core),
	}
	if edit != nil {
		edit(&cfg)
	}
	l := newFakeLauncher(cfg.StopSignal)
	cfg.Launcher = l
	tp := &testPool{Pool: New(cfg), l: l, logs: logs}
	t.Cleanup(tp.shutdownNow)
	return tp
}

// shutdownNow shuts the pool down and ends every fake worker, so that no
// test leaves a goroutine behind whatever state it stopped in.
func (tp *testPool) shutdownNow() {
	done := make(chan struct{})
	go func() {
		tp.Shutdown()
		close(done)
	}()
	for {
		for _, p := range tp.l.all() {
			p.exitWith(Exit{Status: "exit status 0"})
		}
		select {
		case <-done:
			return
		case <-time.After(time.Millisecond):
		}
	}
}

// start runs Start for spec, makes each worker ready and returns them by
// slot.
func (tp *testPool) start(t *testing.T, spec *Spec) []*fakeProc {
	t.Helper()
	errc := make(chan error, 1)
	go func() { errc <- tp.Start(context.Background(), spec) }()
	procs := make([]*fakeProc, tp.Size())
	for i := range procs {
		p := tp.l.next(t)
		if p.slot != i || p.gen != spec.Generation {
			t.Fatalf("launch %d: slot %d generation %d", i, p.slot, p.gen)
		}
		procs[i] = p
	}
	for _, p := range procs {
		p.markReady()
	}
	if err := recvErr(t, errc); err != nil {
		t.Fatalf("Start: %v", err)
	}
	return procs
}

func recvErr(t *testing.T, errc <-chan error) error {
	t.Helper()
	select {
	case err := <-errc:
		return err
	case <-time.After(waitLimit):
		t.Fatal("call did not return")
		return nil
	}
}

func notReturned(t *testing.T, errc <-chan error, what string) {
	t.Helper()
	select {
	case err := <-errc:
		t.Fatalf("%s returned early: %v", what, err)
	default:
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func (tp *testPool) hasPid(pid int) bool {
	for _, w := range tp.Workers() {
		if w.Pid == pid {
			return true
		}
	}
	return false
}

// waitReaped waits until the pool has reaped p.
func (tp *testPool) waitReaped(t *testing.T, p *fakeProc) {
	t.Helper()
	waitFor(t, fmt.Sprintf("pid %d to be reaped", p.pid), func() bool { return !tp.hasPid(p.pid) })
}

// current returns the current worker of every slot, by slot.
func (tp *testPool) current() map[int]WorkerInfo {
	out := map[int]WorkerInfo{}
	for _, w := range tp.Workers() {
		if w.Current {
			out[w.Slot] = w
		}
	}
	return out
}

// restartsScheduled lists the backoff of every restart the pool scheduled.
func (tp *testPool) restartsScheduled() []time.Duration {
	var out []time.Duration
	for _, e := range tp.logs.FilterMessage("worker restart scheduled").All() {
		out = append(out, e.ContextMap()["backoff"].(time.Duration))
	}
	return out
}

// checkServing verifies the roll invariant on a snapshot: at most n+1
// workers not retiring, at least n ready and not retiring, and every slot
// held by one current, ready, non-retiring worker.
func checkServing(ws []WorkerInfo, n int) error { return checkServingSurge(ws, n, 1) }

// checkServingSurge is checkServing for a roll of surge k: at most n+k
// workers not retiring.
func checkServingSurge(ws []WorkerInfo, n, k int) error {
	active, serving := 0, 0
	perSlot := map[int]int{}
	for _, w := range ws {
		if w.Draining {
			continue
		}
		active++
		if w.Ready {
			serving++
		}
		if w.Current && w.Ready {
			perSlot[w.Slot]++
		}
	}
	if active > n+k {
		return fmt.Errorf("%d workers not retiring, want at most %d: %+v", active, n+k, ws)
	}
	if serving < n {
		return fmt.Errorf("%d ready workers not retiring, want at least %d: %+v", serving, n, ws)
	}
	for i := 0; i < n; i++ {
		if perSlot[i] != 1 {
			return fmt.Errorf("slot %d has %d current ready workers: %+v", i, perSlot[i], ws)
		}
	}
	return nil
}

// watchServing checks the invariant continuously until the returned
// function is called, which reports the first violation seen.
func (tp *testPool) watchServing(t *testing.T) func() {
	t.Helper()
	return tp.watchServingSurge(t, 1)
}

// watchServingSurge is watchServing for a roll of surge k.
func (tp *testPool) watchServingSurge(t *testing.T, k int) func() {
	t.Helper()
	stop := make(chan struct{})
	result := make(chan error, 1)
	go func() {
		for {
			if err := checkServingSurge(tp.Workers(), tp.Size(), k); err != nil {
				result <- err
				return
			}
			select {
			case <-stop:
				result <- nil
				return
			case <-time.After(50 * time.Microsecond):
			}
		}
	}()
	return func() {
		t.Helper()
		close(stop)
		if err := <-result; err != nil {
			t.Fatalf("invariant broken during the roll: %v", err)
		}
	}
}

func spec(gen int) *Spec {
	return &Spec{Path: "/bin/worker", Args: []string{"worker"}, Generation: gen}
}

func asStartError(t *testing.T, err error) *StartError {
	t.Helper()
	var se *StartError
	if !errors.As(err, &se) {
		t.Fatalf("error %v (%T), want *StartError", err, err)
	}
	return se
}

func TestStartFillsEverySlotAndWaitsForAll(t *testing.T) {
	tp := newTestPool(t, 3, nil)
	errc := make(chan error, 1)
	go func() { errc <- tp.Start(context.Background(), spec(1)) }()
	var procs []*fakeProc
	for i := 0; i < 3; i++ {
		p := tp.l.next(t)
		if p.slot != i || p.gen != 1 {
			t.Fatalf("launch %d: slot %d generation %d", i, p.slot, p.gen)
		}
		procs = append(procs, p)
	}
	procs[2].markReady()
	procs[0].markReady()
	notReturned(t, errc, "Start")
	procs[1].markReady()
	if err := recvErr(t, errc); err != nil {
		t.Fatal(err)
	}
	ws := tp.Workers()
	if len(ws) != 3 {
		t.Fatalf("workers %+v", ws)
	}
	if err := checkServing(ws, 3); err != nil {
		t.Fatal(err)
	}
	for _, w := range ws {
		if w.Generation != 1 || w.Pid != procs[w.Slot].pid {
			t.Fatalf("worker %+v", w)
		}
	}
	for _, p := range procs {
		if len(p.sigs()) != 0 || p.killCount() != 0 {
			t.Fatalf("pid %d signalled %v, killed %d", p.pid, p.sigs(), p.killCount())
		}
	}
}

func TestStartFailsWhenAWorkerExits(t *testing.T) {
	tp := newTestPool(t, 3, nil)
	errc := make(chan error, 1)
	go func() { errc <- tp.Start(context.Background(), spec(1)) }()
	p0, p1, p2 := tp.l.next(t), tp.l.next(t), tp.l.next(t)
	p0.markReady()
	p1.exitWith(Exit{Status: "exit status 3", Code: 3, StderrTail: "bad config"})
	se := asStartError(t, recvErr(t, errc))
	if se.Slot != 1 || se.Pid != p1.pid || se.Reason != "exited" || se.Exit.Code != 3 || se.Exit.StderrTail != "bad config" {
		t.Fatalf("StartError %+v", se)
	}
	if want := fmt.Sprintf("worker 1 (pid %d) exited at start: exit status 3", p1.pid); se.Error() != want {
		t.Fatalf("Error() = %q, want %q", se.Error(), want)
	}
	for _, p := range []*fakeProc{p0, p2} {
		if !p.stoppedGracefully() {
			t.Fatalf("pid %d not stopped with the stop signal: signals %v kills %d", p.pid, p.sigs(), p.killCount())
		}
	}
	for _, p := range []*fakeProc{p0, p1, p2} {
		tp.waitReaped(t, p)
	}
	if r := tp.restartsScheduled(); len(r) != 0 {
		t.Fatalf("restarts scheduled after a failed start: %v", r)
	}
}

func TestStartFailsWhenAWorkerIsNotReadyInTime(t *testing.T) {
	tp := newTestPool(t, 2, func(c *Config) { c.ReadyTimeout = 30 * time.Millisecond })
	tp.l.setAutoReady(0) // slot 1 is never ready
	errc := make(chan error, 1)
	begin := time.Now()
	go func() { errc <- tp.Start(context.Background(), spec(1)) }()
	p0, p1 := tp.l.next(t), tp.l.next(t)
	se := asStartError(t, recvErr(t, errc))
	if took := time.Since(begin); took < 30*time.Millisecond {
		t.Fatalf("gave up after %s", took)
	}
	if se.Slot != 1 || se.Pid != p1.pid || se.Reason != "not ready within 30ms" || se.Exit.Status != "exit status 0" {
		t.Fatalf("StartError %+v", se)
	}
	if !p0.stoppedGracefully() || !p1.stoppedGracefully() {
		t.Fatal("workers not stopped with the stop signal")
	}
	tp.waitReaped(t, p0)
	tp.waitReaped(t, p1)
}

func TestStartFailsWhenALaunchFails(t *testing.T) {
	tp := newTestPool(t, 3, nil)
	tp.l.setFailSlot(2)
	err := tp.Start(context.Background(), spec(1))
	se := asStartError(t, err)
	if se.Slot != 2 || se.Reason != "cannot start: fork failed" || se.Pid != 0 {
		t.Fatalf("StartError %+v", se)
	}
	procs := tp.l.all()
	if len(procs) != 2 {
		t.Fatalf("%d workers launched", len(procs))
	}
	for _, p := range procs {
		if !p.stoppedGracefully() {
			t.Fatalf("pid %d not stopped with the stop signal", p.pid)
		}
		tp.waitReaped(t, p)
	}
}

// A start cancelled (the primary got TERM) leaves the workers running for
// Shutdown to drain.
func TestStartCancelledLeavesWorkersForShutdown(t *testing.T) {
	tp := newTestPool(t, 2, nil)
	ctx, cancel := context.WithCancelCause(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- tp.Start(ctx, spec(1)) }()
	p0, p1 := tp.l.next(t), tp.l.next(t)
	p0.markReady()
	cause := errors.New("primary stopping")
	cancel(cause)
	if err := recvErr(t, errc); err != cause {
		t.Fatalf("Start: %v, want %v", err, cause)
	}
	for _, p := range []*fakeProc{p0, p1} {
		if p.exited() || p.killCount() != 0 || len(p.sigs()) != 0 {
			t.Fatalf("pid %d touched by a cancelled start", p.pid)
		}
	}
	tp.Shutdown()
	for _, p := range []*fakeProc{p0, p1} {
		if s := p.sigs(); len(s) != 1 || s[0] != syscall.SIGTERM || !p.exited() {
			t.Fatalf("pid %d: signals %v, exited %v", p.pid, s, p.exited())
		}
	}
	if r := tp.restartsScheduled(); len(r) != 0 {
		t.Fatalf("restarts scheduled: %v", r)
	}
}

// A worker that was ready and then exits while Start still waits for
// another is a failed start: Start must not report success with that slot
// empty and, the pool not serving yet, never refilled.
func TestStartFailsWhenAReadyWorkerExitsBeforeTheOthers(t *testing.T) {
	tp := newTestPool(t, 2, nil)
	errc := make(chan error, 1)
	go func() { errc <- tp.Start(context.Background(), spec(1)) }()
	p0, p1 := tp.l.next(t), tp.l.next(t)
	p0.markReady()
	waitFor(t, "slot 0 ready", func() bool { return tp.current()[0].Ready })
	p0.crash()
	tp.waitReaped(t, p0)
	p1.markReady()
	err := recvErr(t, errc)
	if err == nil {
		t.Fatalf("Start succeeded with slot 0 empty: %+v", tp.Workers())
	}
	se := asStartError(t, err)
	if se.Slot != 0 || se.Pid != p0.pid || se.Reason != "exited" || se.Exit.Code != 1 {
		t.Fatalf("StartError %+v", se)
	}
	if !p1.stoppedGracefully() {
		t.Fatal("worker 1 not stopped after a failed start")
	}
	tp.waitReaped(t, p1)
	if r := tp.restartsScheduled(); len(r) != 0 {
		t.Fatalf("restarts scheduled: %v", r)
	}
}

func TestRollReplacesOneSlotAtATime(t *testing.T) {
	const n = 3
	tp := newTestPool(t, n, nil)
	old := tp.start(t, spec(1))
	stop := tp.watchServing(t)

	var steps []string
	var stepsMu sync.Mutex
	errc := make(chan error, 1)
	go func() {
		errc <- tp.Roll(context.Background(), spec(2), nil, func(step, total int) {
			stepsMu.Lock()
			steps = append(steps, fmt.Sprintf("%d/%d", step, total))
			stepsMu.Unlock()
		})
	}()
	var fresh []*fakeProc
	for i := 0; i < n; i++ {
		p := tp.l.next(t)
		if p.slot != i || p.gen != 2 {
			t.Fatalf("step %d launched slot %d generation %d", i, p.slot, p.gen)
		}
		fresh = append(fresh, p)
		// Launched, not ready: nobody has been asked to stop, and the old
		// worker still holds the slot.
		for j := i; j < n; j++ {
			if s := old[j].sigs(); len(s) != 0 {
				t.Fatalf("old worker of slot %d signalled %v before its replacement was ready", j, s)
			}
		}
		if err := checkServing(tp.Workers(), n); err != nil {
			t.Fatal(err)
		}
		if c := tp.current()[i]; c.Pid != old[i].pid {
			t.Fatalf("slot %d held by pid %d before the new worker was ready", i, c.Pid)
		}
		notReturned(t, errc, "Roll")
		p.markReady()
		waitFor(t, "old worker retired", func() bool { return len(old[i].sigs()) > 0 })
		if s := old[i].sigs(); len(s) != 1 || s[0] != syscall.SIGTERM {
			t.Fatalf("old worker of slot %d got %v", i, s)
		}
		tp.waitReaped(t, old[i])
		if err := checkServing(tp.Workers(), n); err != nil {
			t.Fatal(err)
		}
	}
	if err := recvErr(t, errc); err != nil {
		t.Fatal(err)
	}
	stop()

	// The event stream: launch(i) → ready(i) → stop signal to old(i), and
	// the next launch only after that.
	var want []string
	for i := 0; i < n; i++ {
		want = append(want,
			fmt.Sprintf("launch slot=%d gen=2 pid=%d", i, fresh[i].pid),
			fmt.Sprintf("ready pid=%d", fresh[i].pid),
			fmt.Sprintf("signal pid=%d sig=%d", old[i].pid, int(syscall.SIGTERM)),
			fmt.Sprintf("exit pid=%d", old[i].pid))
	}
	evs := tp.l.ev.all()
	evs = evs[len(evs)-len(want):]
	if strings.Join(evs, "\n") != strings.Join(want, "\n") {
		t.Fatalf("events:\n%s\nwant:\n%s", strings.Join(evs, "\n"), strings.Join(want, "\n"))
	}
	stepsMu.Lock()
	if got := strings.Join(steps, " "); got != "1/3 2/3 3/3" {
		t.Fatalf("progress %q", got)
	}
	stepsMu.Unlock()
	for i, w := range tp.current() {
		if w.Generation != 2 || w.Pid != fresh[i].pid {
			t.Fatalf("slot %d: %+v", i, w)
		}
	}
	for _, p := range fresh {
		if len(p.sigs()) != 0 || p.killCount() != 0 {
			t.Fatalf("new worker %d signalled", p.pid)
		}
	}
}

func TestRollAbortAtFirstStepLeavesOldWorkers(t *testing.T) {
	tp := newTestPool(t, 2, nil)
	old := tp.start(t, spec(1))
	errc := make(chan error, 1)
	go func() { errc <- tp.Roll(context.Background(), spec(2), nil, nil) }()
	p := tp.l.next(t)
	p.exitWith(Exit{Status: "exit status 2", Code: 2, StderrTail: "panic: bad"})
	se := asStartError(t, recvErr(t, errc))
	if se.Slot != 0 || se.Pid != p.pid || se.Reason != "exited" || se.Exit.Code != 2 || se.Exit.StderrTail != "panic: bad" {
		t.Fatalf("StartError %+v", se)
	}
	tp.waitReaped(t, p)
	for i, o := range old {
		if len(o.sigs()) != 0 || o.killCount() != 0 || o.exited() {
			t.Fatalf("old worker %d touched", i)
		}
	}
	cur := tp.current()
	if len(cur) != 2 || cur[0].Pid != old[0].pid || cur[1].Pid != old[1].pid || len(tp.Workers()) != 2 {
		t.Fatalf("workers %+v", tp.Workers())
	}
	if err := checkServing(tp.Workers(), 2); err != nil {
		t.Fatal(err)
	}
	tp.l.noLaunch(t, 0)
}

func TestRollAbortAtSecondStepKeepsFirstSlotRolled(t *testing.T) {
	tp := newTestPool(t, 2, nil)
	old := tp.start(t, spec(1))
	errc := make(chan error, 1)
	go func() { errc <- tp.Roll(context.Background(), spec(2), nil, nil) }()
	n0 := tp.l.next(t)
	n0.markReady()
	n1 := tp.l.next(t)
	if n1.slot != 1 {
		t.Fatalf("second step launched slot %d", n1.slot)
	}
	if len(old[0].sigs()) != 1 || len(old[1].sigs()) != 0 {
		t.Fatalf("signals: old0 %v old1 %v", old[0].sigs(), old[1].sigs())
	}
	n1.crash()
	se := asStartError(t, recvErr(t, errc))
	if se.Slot != 1 || se.Pid != n1.pid {
		t.Fatalf("StartError %+v", se)
	}
	tp.waitReaped(t, n1)
	tp.waitReaped(t, old[0])
	cur := tp.current()
	if cur[0].Pid != n0.pid || cur[0].Generation != 2 || cur[1].Pid != old[1].pid || cur[1].Generation != 1 {
		t.Fatalf("current %+v", cur)
	}
	if err := checkServing(tp.Workers(), 2); err != nil {
		t.Fatal(err)
	}
	// Each slot keeps its own spec: a crash restarts it with that one.
	n0.crash()
	if p := tp.l.next(t); p.slot != 0 || p.gen != 2 {
		t.Fatalf("slot 0 restarted as slot %d generation %d", p.slot, p.gen)
	}
	old[1].crash()
	if p := tp.l.next(t); p.slot != 1 || p.gen != 1 {
		t.Fatalf("slot 1 restarted as slot %d generation %d", p.slot, p.gen)
	}
}

func TestRollAbortWhenNotReadyInTime(t *testing.T) {
	tp := newTestPool(t, 2, func(c *Config) { c.ReadyTimeout = 25 * time.Millisecond })
	tp.l.setAutoReady(0, 1)
	old := tp.start(t, spec(1))
	tp.l.setAutoReady()
	errc := make(chan error, 1)
	go func() { errc <- tp.Roll(context.Background(), spec(2), nil, nil) }()
	p := tp.l.next(t)
	se := asStartError(t, recvErr(t, errc))
	if se.Slot != 0 || se.Pid != p.pid || se.Reason != "not ready within 25ms" || se.Exit.Status != "exit status 0" {
		t.Fatalf("StartError %+v", se)
	}
	// Not ready is not the same as not serving: it gets the stop signal
	// and its drain, like any retired worker.
	if !p.stoppedGracefully() {
		t.Fatalf("new worker: kills %d signals %v", p.killCount(), p.sigs())
	}
	untouched(t, old)
	tp.waitReaped(t, p)
	if err := checkServing(tp.Workers(), 2); err != nil {
		t.Fatal(err)
	}
}

func TestRollAbortWhenCancelled(t *testing.T) {
	tp := newTestPool(t, 2, nil)
	old := tp.start(t, spec(1))
	ctx, cancel := context.WithCancelCause(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- tp.Roll(ctx, spec(2), nil, nil) }()
	p := tp.l.next(t)
	cause := errors.New("shutdown asked")
	cancel(cause)
	if err := recvErr(t, errc); err != cause {
		t.Fatalf("Roll: %v, want %v", err, cause)
	}
	if !p.stoppedGracefully() {
		t.Fatal("new worker not stopped with the stop signal")
	}
	untouched(t, old)
	tp.waitReaped(t, p)
	if err := checkServing(tp.Workers(), 2); err != nil {
		t.Fatal(err)
	}
}

func TestRollFailsWhenLaunchFails(t *testing.T) {
	tp := newTestPool(t, 2, nil)
	old := tp.start(t, spec(1))
	tp.l.setFailNext(1)
	err := tp.Roll(context.Background(), spec(2), nil, nil)
	se := asStartError(t, err)
	if se.Slot != 0 || !strings.HasPrefix(se.Reason, "cannot start: fork failed") {
		t.Fatalf("StartError %+v", se)
	}
	for _, o := range old {
		if len(o.sigs()) != 0 {
			t.Fatal("old worker touched")
		}
	}
}

func TestBackoff(t *testing.T) {
	const min, max = 100 * time.Millisecond, time.Second
	for _, c := range []struct {
		failures int
		want     time.Duration
	}{
		{-1, 0}, {0, 0}, {1, 0}, {2, min}, {3, 2 * min}, {4, 4 * min}, {5, 8 * min},
		{6, max}, {7, max}, {100, max}, {1 << 30, max},
	} {
		if got := Backoff(c.failures, min, max); got != c.want {
			t.Errorf("Backoff(%d) = %s, want %s", c.failures, got, c.want)
		}
	}
	if got := Backoff(2, 3*time.Second, time.Second); got != time.Second {
		t.Errorf("min above max: %s", got)
	}
}

func TestCrashRestartsAtOnceThenWithBackoff(t *testing.T) {
	tp := newTestPool(t, 2, nil) // backoff 20ms..80ms
	procs := tp.start(t, spec(1))
	cur := procs[0]
	var want []time.Duration
	for i, backoff := range []time.Duration{0, 20 * time.Millisecond, 40 * time.Millisecond, 80 * time.Millisecond, 80 * time.Millisecond} {
		crashed := time.Now()
		cur.crash()
		next := tp.l.next(t)
		if took := time.Since(crashed); took < backoff {
			t.Fatalf("crash %d: restarted after %s, before the backoff %s", i+1, took, backoff)
		}
		if next.slot != 0 || next.gen != 1 {
			t.Fatalf("restarted slot %d generation %d", next.slot, next.gen)
		}
		want = append(want, backoff)
		if got := tp.restartsScheduled(); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("backoffs %v, want %v", got, want)
		}
		// The restarted worker is current at once, before it is ready.
		waitFor(t, "restarted worker current", func() bool { return tp.current()[0].Pid == next.pid })
		cur = next
	}
	if len(procs[1].sigs()) != 0 || procs[1].exited() {
		t.Fatal("the other slot was touched")
	}
	for _, w := range tp.Workers() {
		if want := map[int]int{0: 5, 1: 0}[w.Slot]; w.Restarts != want {
			t.Fatalf("slot %d: %d restarts counted, want %d", w.Slot, w.Restarts, want)
		}
	}
}

func TestStableWorkerResetsFailureCount(t *testing.T) {
	tp := newTestPool(t, 1, func(c *Config) { c.StableAfter = 50 * time.Millisecond })
	cur := tp.start(t, spec(1))[0]
	for i := 0; i < 3; i++ {
		cur.crash() // uptime 1ms: not stable
		cur = tp.l.next(t)
	}
	// Up longer than StableAfter: the count starts again.
	cur.exitWith(Exit{Status: "exit status 1", Code: 1, Uptime: 50 * time.Millisecond})
	cur = tp.l.next(t)
	cur.crash()
	tp.l.next(t)
	got := tp.restartsScheduled()
	want := []time.Duration{0, 20 * time.Millisecond, 40 * time.Millisecond, 0, 20 * time.Millisecond}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("backoffs %v, want %v", got, want)
	}
}

func TestFailedRestartIsRetriedWithBackoff(t *testing.T) {
	tp := newTestPool(t, 1, nil)
	p := tp.start(t, spec(1))[0]
	tp.l.setFailNext(1)
	p.crash()
	next := tp.l.next(t)
	if next.slot != 0 {
		t.Fatalf("slot %d", next.slot)
	}
	if n := tp.logs.FilterMessage("worker restart failed").Len(); n != 1 {
		t.Fatalf("%d restart failures logged", n)
	}
	if got := tp.restartsScheduled(); fmt.Sprint(got) != fmt.Sprint([]time.Duration{0, 20 * time.Millisecond}) {
		t.Fatalf("backoffs %v", got)
	}
}

func TestShutdownKillsWorkerThatIgnoresStopSignal(t *testing.T) {
	tp := newTestPool(t, 2, func(c *Config) {
		c.DrainTimeout = 30 * time.Millisecond
		c.StopSignal = syscall.SIGUSR1
	})
	procs := tp.start(t, spec(1))
	procs[1].setIgnoreStop(true)
	begin := time.Now()
	tp.Shutdown()
	if took := time.Since(begin); took < 30*time.Millisecond {
		t.Fatalf("Shutdown returned after %s, before the drain timeout", took)
	}
	for i, p := range procs {
		if s := p.sigs(); len(s) != 1 || s[0] != syscall.SIGUSR1 {
			t.Fatalf("worker %d got %v", i, s)
		}
		if !p.exited() {
			t.Fatalf("worker %d still running after Shutdown", i)
		}
	}
	if procs[0].killCount() != 0 || procs[1].killCount() != 1 {
		t.Fatalf("kills: %d %d", procs[0].killCount(), procs[1].killCount())
	}
	if ws := tp.Workers(); len(ws) != 0 {
		t.Fatalf("workers left %+v", ws)
	}
}

func TestShutdownReturnsOnlyWhenAllAreDone(t *testing.T) {
	tp := newTestPool(t, 2, nil) // DrainTimeout: never
	procs := tp.start(t, spec(1))
	procs[0].setIgnoreStop(true)
	done := make(chan error, 1)
	go func() {
		tp.Shutdown()
		done <- nil
	}()
	waitFor(t, "stop signals", func() bool { return len(procs[0].sigs()) == 1 && procs[1].exited() })
	notReturned(t, done, "Shutdown")
	procs[0].exitWith(Exit{Status: "exit status 0"})
	recvErr(t, done)
	if procs[0].killCount() != 0 {
		t.Fatal("killed before the drain timeout")
	}
}

func TestNoRestartAfterShutdownBegins(t *testing.T) {
	tp := newTestPool(t, 2, func(c *Config) { c.BackoffMin, c.BackoffMax = time.Minute, time.Minute })
	procs := tp.start(t, spec(1))
	// Slot 0 crashes twice: its second restart waits a minute (BackoffMax
	// too, or the test pool's 80ms cap would let it launch before
	// Shutdown on a slow machine).
	procs[0].crash()
	tp.l.next(t).crash()
	waitFor(t, "restart scheduled", func() bool { return len(tp.restartsScheduled()) == 2 })
	// Slot 1 ignores the stop signal and crashes while draining.
	procs[1].setIgnoreStop(true)
	done := make(chan struct{})
	go func() {
		tp.Shutdown()
		close(done)
	}()
	waitFor(t, "stop signal", func() bool { return len(procs[1].sigs()) == 1 })
	procs[1].crash()
	<-done
	// The pending restart was cancelled, and nothing else was scheduled.
	tp.mu.Lock()
	pending := tp.slots[0].restart != nil || tp.slots[1].restart != nil
	tp.mu.Unlock()
	if pending {
		t.Fatal("a restart is still pending after Shutdown")
	}
	if got := len(tp.restartsScheduled()); got != 2 {
		t.Fatalf("%d restarts scheduled", got)
	}
	tp.l.noLaunch(t, 0)
	if err := tp.Start(context.Background(), spec(2)); !errors.Is(err, ErrClosing) {
		t.Fatalf("Start after Shutdown: %v", err)
	}
	if err := tp.Roll(context.Background(), spec(2), nil, nil); !errors.Is(err, ErrClosing) {
		t.Fatalf("Roll after Shutdown: %v", err)
	}
	tp.Reclaim(context.Background(), spec(2)) // would restart, which must not launch
	tp.l.noLaunch(t, 30*time.Millisecond)
}

// A restart whose timer fires as Shutdown begins launches nothing.
func TestRestartRacingShutdownLaunchesNothingAfterIt(t *testing.T) {
	tp := newTestPool(t, 1, nil)
	p := tp.start(t, spec(1))[0]
	p.crash() // restarted at once, possibly while Shutdown runs
	tp.Shutdown()
	// Whatever was launched before Shutdown took the lock was retired by it.
	for _, q := range tp.l.all() {
		if !q.exited() {
			t.Fatalf("pid %d still running after Shutdown", q.pid)
		}
	}
}

func TestAdoptThenRollCallsRetireHookAfterEachReady(t *testing.T) {
	const n = 3
	tp := newTestPool(t, n, nil)
	tp.Adopt()
	if tp.Remote() != n {
		t.Fatalf("Remote() = %d", tp.Remote())
	}
	var (
		mu    sync.Mutex
		hooks []int
		bad   []string
	)
	hook := func(ctx context.Context, slot int) error {
		mu.Lock()
		defer mu.Unlock()
		hooks = append(hooks, slot)
		if c := tp.current()[slot]; !c.Ready || c.Draining || c.Generation != 3 {
			bad = append(bad, fmt.Sprintf("hook for slot %d with current %+v", slot, c))
		}
		return nil
	}
	errc := make(chan error, 1)
	go func() { errc <- tp.Roll(context.Background(), spec(3), hook, nil) }()
	for i := 0; i < n; i++ {
		p := tp.l.next(t)
		if p.slot != i {
			t.Fatalf("launched slot %d", p.slot)
		}
		mu.Lock()
		if len(hooks) != i {
			t.Fatalf("hooks %v before slot %d was ready", hooks, i)
		}
		mu.Unlock()
		p.markReady()
		waitFor(t, "retire hook", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(hooks) == i+1
		})
	}
	if err := recvErr(t, errc); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(hooks) != "[0 1 2]" || len(bad) != 0 {
		t.Fatalf("hooks %v %v", hooks, bad)
	}
	if tp.Remote() != 0 {
		t.Fatalf("Remote() = %d after the roll", tp.Remote())
	}
	if err := checkServing(tp.Workers(), n); err != nil {
		t.Fatal(err)
	}
	for _, p := range tp.l.all() {
		if len(p.sigs()) != 0 {
			t.Fatal("a worker was signalled")
		}
	}
}

func TestReclaimOfAdoptedSlotsLaunchesNothing(t *testing.T) {
	tp := newTestPool(t, 2, nil)
	tp.Adopt()
	// No Start: nothing is launched for remote slots.
	tp.l.noLaunch(t, 0)
	tp.Reclaim(context.Background(), nil) // slots without a spec cannot be refilled
	tp.l.noLaunch(t, 30*time.Millisecond)
	if tp.Remote() != 2 {
		t.Fatalf("Remote() = %d after a Reclaim without a spec", tp.Remote())
	}
}

// A new primary whose old primary died mid-roll: the slots still held by
// the old one are filled all at once with the given spec, and Reclaim
// returns once they are ready; one that crashes is restarted.
func TestReclaimOfAdoptedSlotsWithASpec(t *testing.T) {
	const n = 3
	tp := newTestPool(t, n, nil)
	tp.Adopt()
	tp.l.setAutoReady(0)
	// Slot 0 is rolled; then the old primary is gone.
	if err := tp.Roll(context.Background(), spec(2), func(ctx context.Context, slot int) error {
		return errors.New("gone")
	}, nil); err == nil {
		t.Fatal("Roll succeeded with a failing retire hook")
	}
	tp.l.next(t)
	tp.l.setAutoReady()
	readyc := make(chan int, 1)
	go func() { readyc <- tp.Reclaim(context.Background(), spec(2)) }()
	// Launched at once, both, before either is ready.
	a, b := tp.l.next(t), tp.l.next(t)
	if a.slot+b.slot != 1+2 || a.gen != 2 || b.gen != 2 {
		t.Fatalf("reclaimed slots %d, %d generations %d, %d", a.slot, b.slot, a.gen, b.gen)
	}
	if tp.Remote() != 0 {
		t.Fatalf("Remote() = %d after Reclaim", tp.Remote())
	}
	a.markReady()
	select {
	case r := <-readyc:
		t.Fatalf("Reclaim returned %d before every worker was ready", r)
	case <-time.After(20 * time.Millisecond):
	}
	b.crash()
	if r := <-readyc; r != 1 {
		t.Fatalf("Reclaim: %d ready, want 1", r)
	}
	// The crashed one is restarted like any other.
	c := tp.l.next(t)
	if c.slot != b.slot || c.gen != 2 {
		t.Fatalf("restart of slot %d generation %d, want slot %d", c.slot, c.gen, b.slot)
	}
	c.markReady()
	waitFor(t, "every slot served", func() bool { return checkServing(tp.Workers(), n) == nil })
}

func TestHandOverRetiresWithoutRestart(t *testing.T) {
	tp := newTestPool(t, 3, nil)
	procs := tp.start(t, spec(1))
	if err := tp.HandOver(1); err != nil {
		t.Fatal(err)
	}
	if s := procs[1].sigs(); len(s) != 1 || s[0] != syscall.SIGTERM {
		t.Fatalf("handed-over worker got %v", s)
	}
	tp.waitReaped(t, procs[1])
	if tp.Remote() != 1 {
		t.Fatalf("Remote() = %d", tp.Remote())
	}
	if r := tp.restartsScheduled(); len(r) != 0 {
		t.Fatalf("restart scheduled for a handed-over slot: %v", r)
	}
	if cur := tp.current(); len(cur) != 2 || cur[0].Pid != procs[0].pid || cur[2].Pid != procs[2].pid {
		t.Fatalf("current %+v", cur)
	}
	for _, bad := range []int{-1, 3} {
		if err := tp.HandOver(bad); err == nil {
			t.Fatalf("HandOver(%d) succeeded", bad)
		}
	}
	tp.l.noLaunch(t, 0)

	// Reclaim refills the slot at once with its last spec.
	readyc := make(chan int, 1)
	go func() { readyc <- tp.Reclaim(context.Background(), spec(9)) }()
	p := tp.l.next(t)
	if p.slot != 1 || p.gen != 1 {
		t.Fatalf("reclaimed slot %d generation %d", p.slot, p.gen)
	}
	if tp.Remote() != 0 {
		t.Fatalf("Remote() = %d after Reclaim", tp.Remote())
	}
	waitFor(t, "reclaimed worker current", func() bool { return tp.current()[1].Pid == p.pid })
	p.markReady()
	if r := <-readyc; r != 1 {
		t.Fatalf("Reclaim: %d ready, want 1", r)
	}
}

func TestRollBackRefillsHandedOverSlots(t *testing.T) {
	tp := newTestPool(t, 3, nil)
	procs := tp.start(t, spec(7))
	// A later generation's roll took slot 0 and 2 away.
	for _, i := range []int{0, 2} {
		if err := tp.HandOver(i); err != nil {
			t.Fatal(err)
		}
		tp.waitReaped(t, procs[i])
	}
	var (
		mu    sync.Mutex
		hooks []int
	)
	hook := func(ctx context.Context, slot int) error {
		mu.Lock()
		hooks = append(hooks, slot)
		mu.Unlock()
		return nil
	}
	hooked := func() []int {
		mu.Lock()
		defer mu.Unlock()
		return append([]int(nil), hooks...)
	}
	errc := make(chan error, 1)
	go func() { errc <- tp.RollBack(context.Background(), hook) }()
	for k, i := range []int{0, 2} {
		p := tp.l.next(t)
		if p.slot != i || p.gen != 7 {
			t.Fatalf("rollback launched slot %d generation %d", p.slot, p.gen)
		}
		if h := hooked(); len(h) != k {
			t.Fatalf("hooks %v before slot %d was ready", h, i)
		}
		p.markReady()
		waitFor(t, "retire hook", func() bool { return len(hooked()) == k+1 })
	}
	if err := recvErr(t, errc); err != nil {
		t.Fatal(err)
	}
	if h := hooked(); fmt.Sprint(h) != "[0 2]" {
		t.Fatalf("hooks %v", h)
	}
	if tp.Remote() != 0 {
		t.Fatalf("Remote() = %d", tp.Remote())
	}
	if len(procs[1].sigs()) != 0 {
		t.Fatal("slot 1 was touched")
	}
	if err := checkServing(tp.Workers(), 3); err != nil {
		t.Fatal(err)
	}
}

// A new worker that is not ready in time and ignores the stop signal is
// killed once the drain timeout has passed, and only then is the roll
// aborted.
func TestRollAbortKillsAStuckNewWorkerAfterDrainTimeout(t *testing.T) {
	tp := newTestPool(t, 1, func(c *Config) {
		c.ReadyTimeout = 20 * time.Millisecond
		c.DrainTimeout = 30 * time.Millisecond
	})
	tp.l.setAutoReady(0)
	tp.start(t, spec(1))
	tp.l.setAutoReady()
	tp.l.setIgnoreStop(true)
	errc := make(chan error, 1)
	go func() { errc <- tp.Roll(context.Background(), spec(2), nil, nil) }()
	p := tp.l.next(t)
	se := asStartError(t, recvErr(t, errc))
	if se.Exit.Status != "signal: killed" || p.killCount() != 1 || len(p.sigs()) != 1 {
		t.Fatalf("StartError %+v, kills %d, signals %v", se, p.killCount(), p.sigs())
	}
	tp.l.setIgnoreStop(false)
	if err := checkServing(tp.Workers(), 1); err != nil {
		t.Fatal(err)
	}
}

// If the other primary does not confirm that it retired its worker, the
// roll stops there: going on could leave both primaries serving a slot.
func TestRollStopsWhenTheRetireHookFails(t *testing.T) {
	tp := newTestPool(t, 3, nil)
	tp.Adopt()
	tp.l.setAutoReady(0, 1, 2)
	hook := func(ctx context.Context, slot int) error {
		if slot == 1 {
			return errors.New("old primary gone")
		}
		return nil
	}
	err := tp.Roll(context.Background(), spec(2), hook, nil)
	if err == nil || !strings.Contains(err.Error(), "slot 1") {
		t.Fatalf("Roll: %v, want the failed retire of slot 1", err)
	}
	if n := len(tp.l.all()); n != 2 {
		t.Fatalf("%d workers launched, want 2 (none after the failed retire)", n)
	}
	if tp.Remote() != 1 {
		t.Fatalf("Remote() = %d, want slot 2 still the other primary's", tp.Remote())
	}
}

// A new worker that is ready and exits at once, in whatever order the roll
// and the worker's monitor see that: either the roll fails and the old
// worker keeps the slot, or the slot is left with a live worker (a restart
// replaces the dead one). Never a dead worker holding the slot.
func TestRollNeverInstallsADeadWorker(t *testing.T) {
	for i := 0; i < 100; i++ {
		tp := newTestPool(t, 1, nil)
		tp.l.setAutoReady(0)
		old := tp.start(t, spec(1))
		tp.l.setAutoReady()
		errc := make(chan error, 1)
		go func() { errc <- tp.Roll(context.Background(), spec(2), nil, nil) }()
		p := tp.l.next(t)
		p.markReady()
		p.crash()
		if err := recvErr(t, errc); err != nil {
			asStartError(t, err)
			if len(old[0].sigs()) != 0 || old[0].exited() {
				t.Fatal("old worker retired for a replacement that is gone")
			}
			continue
		}
		// The roll won: the crash is an unexpected exit of the slot's
		// worker, restarted at once.
		r := tp.l.next(t)
		if r.slot != 0 || r.gen != 2 {
			t.Fatalf("restart of slot %d generation %d", r.slot, r.gen)
		}
		tp.shutdownNow()
	}
}
