//go:build linux

package runtime

import (
	"context"
	"errors"
	"os"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
)

// fakeDeploys records the deploys the loop runs; each one blocks until the
// test releases it (or its context ends).
type fakeDeploys struct {
	mu               sync.Mutex
	started, running int
	maxRunning       int
	release          chan error
	begun            chan struct{}
}

func newFakeDeploys() *fakeDeploys {
	return &fakeDeploys{release: make(chan error), begun: make(chan struct{}, 16)}
}

func (f *fakeDeploys) deploy(ctx context.Context) error {
	f.mu.Lock()
	f.started++
	f.running++
	if f.running > f.maxRunning {
		f.maxRunning = f.running
	}
	f.mu.Unlock()
	f.begun <- struct{}{}
	defer func() {
		f.mu.Lock()
		f.running--
		f.mu.Unlock()
	}()
	select {
	case err := <-f.release:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (f *fakeDeploys) counts() (started, maxRunning int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.started, f.maxRunning
}

func (f *fakeDeploys) runningNow() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.running
}

func (f *fakeDeploys) awaitBegun(t *testing.T) {
	t.Helper()
	select {
	case <-f.begun:
	case <-time.After(5 * time.Second):
		t.Fatal("no deploy began")
	}
}

// quiet is how long a test waits to see that something does not happen:
// long enough that the loop, had it acted, would have on a loaded machine.
const quiet = 500 * time.Millisecond

func (f *fakeDeploys) noneBegun(t *testing.T) {
	t.Helper()
	select {
	case <-f.begun:
		t.Fatal("a deploy began that should not have")
	case <-time.After(quiet):
	}
}

type loopRun struct {
	sigs     chan os.Signal
	reqs     chan request
	deploys  *fakeDeploys
	result   chan error
	stopped  chan struct{}
	handover chan bool
	// passed receives what the loop passes on at a hand-over.
	passed chan []os.Signal
	// scales receives the delta of every scaling job the loop runs.
	scales chan int
}

func startLoop(t *testing.T, pending bool) *loopRun {
	t.Helper()
	// Unbuffered: a send returns once the loop has taken the signal.
	r := &loopRun{sigs: make(chan os.Signal), reqs: make(chan request), deploys: newFakeDeploys(), result: make(chan error, 1),
		stopped: make(chan struct{}, 1), handover: make(chan bool, 1), passed: make(chan []os.Signal, 1), scales: make(chan int, 16)}
	var queue jobQueue
	if pending {
		queue.add(request{op: "deploy"})
	}
	go func() {
		r.result <- jobLoop(context.Background(), zap.NewNop(), r.sigs, r.reqs, queue, r.deploys.deploy,
			func(delta int) func(context.Context) error {
				return func(context.Context) error {
					if r.deploys.runningNow() != 0 {
						t.Errorf("scale %+d ran beside a deploy", delta)
					}
					r.scales <- delta
					return nil
				}
			},
			func() error { r.stopped <- struct{}{}; return nil },
			func(pass []os.Signal) error {
				r.passed <- pass
				r.handover <- slices.Contains(pass, os.Signal(syscall.SIGHUP))
				return nil
			})
	}()
	return r
}

func (r *loopRun) end(t *testing.T) {
	t.Helper()
	select {
	case err := <-r.result:
		if err != nil {
			t.Fatalf("loop returned %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("loop did not return")
	}
}

func TestLoopCoalescesHUPsDuringADeploy(t *testing.T) {
	r := startLoop(t, false)
	r.sigs <- syscall.SIGHUP
	r.deploys.awaitBegun(t)
	for i := 0; i < 5; i++ {
		r.sigs <- syscall.SIGHUP
	}
	r.deploys.noneBegun(t)
	r.deploys.release <- nil // the first ends: exactly one more runs
	r.deploys.awaitBegun(t)
	r.deploys.release <- errors.New("aborted") // an aborted deploy ends like any other
	r.deploys.noneBegun(t)
	if started, maxRunning := r.deploys.counts(); started != 2 || maxRunning != 1 {
		t.Fatalf("%d deploys started, %d at once; want 2, 1", started, maxRunning)
	}
	r.sigs <- syscall.SIGTERM
	<-r.stopped
	r.end(t)
}

func TestLoopRunsADeployPendingFromStartUp(t *testing.T) {
	r := startLoop(t, true)
	r.deploys.awaitBegun(t)
	r.deploys.release <- nil
	r.deploys.noneBegun(t)
	r.sigs <- syscall.SIGINT
	<-r.stopped
	r.end(t)
}

func TestLoopTERMCancelsTheRunningDeployThenShutsDown(t *testing.T) {
	r := startLoop(t, false)
	r.sigs <- syscall.SIGHUP
	r.deploys.awaitBegun(t)
	r.sigs <- syscall.SIGHUP // pending, never run: shutdown wins
	r.sigs <- syscall.SIGTERM
	select {
	case <-r.stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("no shutdown after TERM")
	}
	r.end(t)
	if started, _ := r.deploys.counts(); started != 1 {
		t.Fatalf("%d deploys started, want 1", started)
	}
}

func TestLoopHandsOverWithThePendingDeploy(t *testing.T) {
	r := startLoop(t, false)
	r.sigs <- syscall.SIGHUP
	r.deploys.awaitBegun(t)
	r.sigs <- syscall.SIGHUP
	r.deploys.release <- errHandedOver
	select {
	case pending := <-r.handover:
		if !pending {
			t.Fatal("the HUP that came during the hand-over was dropped")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("loop did not hand over")
	}
	r.end(t)
}

func awaitOutcome(t *testing.T, ch <-chan error) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("no outcome")
		return nil
	}
}

func noOutcome(t *testing.T, ch <-chan error) {
	t.Helper()
	select {
	case err := <-ch:
		t.Fatalf("outcome %v too early", err)
	case <-time.After(quiet):
	}
}

func TestLoopRequestsGetTheOutcomeOfTheDeployTheyJoined(t *testing.T) {
	r := startLoop(t, false)
	first, firstDone := deployRequest()
	r.reqs <- first
	r.deploys.awaitBegun(t)
	// Asked for while one runs: both wait for the next deploy, which reads
	// what is on disk after they asked.
	second, secondDone := deployRequest()
	third, thirdDone := deployRequest()
	r.reqs <- second
	r.sigs <- syscall.SIGHUP
	r.reqs <- third
	noOutcome(t, firstDone)
	r.deploys.release <- nil
	if err := awaitOutcome(t, firstDone); err != nil {
		t.Fatalf("first: %v", err)
	}
	r.deploys.awaitBegun(t)
	noOutcome(t, secondDone)
	aborted := errors.New("aborted")
	r.deploys.release <- aborted
	for _, ch := range []<-chan error{secondDone, thirdDone} {
		if err := awaitOutcome(t, ch); err != aborted {
			t.Fatalf("got %v, want %v", err, aborted)
		}
	}
	r.deploys.noneBegun(t)
	r.sigs <- syscall.SIGTERM
	<-r.stopped
	r.end(t)
}

func TestLoopRunsOtherJobsInTurnNeverBesideADeploy(t *testing.T) {
	r := startLoop(t, false)
	r.sigs <- syscall.SIGHUP
	r.deploys.awaitBegun(t)
	ran := make(chan string, 4)
	job := func(name string) (request, <-chan error) {
		done := make(chan error, 1)
		return request{op: name, run: func(ctx context.Context) error {
			if r.deploys.runningNow() != 0 {
				t.Errorf("%s ran beside a deploy", name)
			}
			ran <- name
			return nil
		}, done: done}, done
	}
	a, aDone := job("a")
	b, bDone := job("b")
	r.reqs <- a
	r.sigs <- syscall.SIGHUP // after a, before b
	r.reqs <- b
	select {
	case name := <-ran:
		t.Fatalf("%s ran during the deploy", name)
	case <-time.After(quiet):
	}
	r.deploys.release <- nil
	if err := awaitOutcome(t, aDone); err != nil {
		t.Fatal(err)
	}
	r.deploys.awaitBegun(t)
	noOutcome(t, bDone)
	r.deploys.release <- nil
	if err := awaitOutcome(t, bDone); err != nil {
		t.Fatal(err)
	}
	if got := []string{<-ran, <-ran}; got[0] != "a" || got[1] != "b" {
		t.Fatalf("jobs ran in order %v", got)
	}
	r.sigs <- syscall.SIGTERM
	<-r.stopped
	r.end(t)
}

func TestLoopAnswersQueuedRequestsOnShutdownAndHandOver(t *testing.T) {
	r := startLoop(t, false)
	r.sigs <- syscall.SIGHUP
	r.deploys.awaitBegun(t)
	queued, queuedDone := deployRequest()
	r.reqs <- queued
	r.sigs <- syscall.SIGTERM
	if err := awaitOutcome(t, queuedDone); !errors.Is(err, ErrShuttingDown) {
		t.Fatalf("queued deploy at shutdown: %v", err)
	}
	<-r.stopped
	r.end(t)

	r = startLoop(t, false)
	running, runningDone := deployRequest()
	r.reqs <- running
	r.deploys.awaitBegun(t)
	other := make(chan error, 1)
	r.reqs <- request{op: "scale", run: func(context.Context) error { return nil }, done: other}
	r.deploys.release <- errHandedOver
	if err := awaitOutcome(t, runningDone); err != nil {
		t.Fatalf("the deploy that handed over: %v", err)
	}
	if err := awaitOutcome(t, other); !errors.Is(err, errHandedOver) {
		t.Fatalf("queued job at hand-over: %v", err)
	}
	if pending := <-r.handover; pending {
		t.Fatal("no deploy was queued")
	}
	r.end(t)
}

func TestLoopTTINAndTTOUScaleInTurn(t *testing.T) {
	r := startLoop(t, false)
	r.sigs <- syscall.SIGHUP
	r.deploys.awaitBegun(t)
	r.sigs <- syscall.SIGTTIN
	r.sigs <- syscall.SIGTTOU
	r.sigs <- syscall.SIGTTIN
	select {
	case d := <-r.scales:
		t.Fatalf("scale %+d ran during the deploy", d)
	case <-time.After(quiet):
	}
	r.deploys.release <- nil
	for _, want := range []int{+1, -1, +1} {
		select {
		case d := <-r.scales:
			if d != want {
				t.Fatalf("scale %+d, want %+d", d, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("scale job did not run")
		}
	}
	r.sigs <- syscall.SIGTERM
	<-r.stopped
	r.end(t)
}

// A deploy asked for through a request is not passed on to the new
// primary after a hand-over: its asker is told errHandedOver and asks the
// new primary itself.
func TestLoopHandOverPassesOnOnlySignalledDeploys(t *testing.T) {
	r := startLoop(t, false)
	r.sigs <- syscall.SIGHUP
	r.deploys.awaitBegun(t)
	asked, askedDone := deployRequest()
	r.reqs <- asked
	r.deploys.release <- errHandedOver
	if err := awaitOutcome(t, askedDone); !errors.Is(err, errHandedOver) {
		t.Fatalf("queued deploy request at hand-over: %v", err)
	}
	if pending := <-r.handover; pending {
		t.Fatal("a requested deploy was passed on as pending")
	}
	r.end(t)
}

// A deploy or a rollback asked for while a deploy runs (or queued behind
// it when it starts) closes the running deploy's newerDeploy channel,
// which ends its probation; other jobs do not.
func TestLoopNewerDeployEndsTheRunningOnesProbation(t *testing.T) {
	sigs, reqs := make(chan os.Signal), make(chan request)
	newer := make(chan (<-chan struct{}), 8)
	release := make(chan struct{})
	job := func(ctx context.Context) error {
		newer <- newerDeploy(ctx)
		select {
		case <-release:
		case <-ctx.Done():
		}
		return nil
	}
	stopped := make(chan struct{})
	result := make(chan error, 1)
	go func() {
		result <- jobLoop(context.Background(), zap.NewNop(), sigs, reqs, nil, job,
			func(int) func(context.Context) error { return job },
			func() error { close(stopped); return nil }, func([]os.Signal) error { return nil })
	}()
	next := func() <-chan struct{} {
		t.Helper()
		select {
		case ch := <-newer:
			return ch
		case <-time.After(5 * time.Second):
			t.Fatal("no job began")
			return nil
		}
	}
	isClosed := func(ch <-chan struct{}) bool {
		select {
		case <-ch:
			return true
		case <-time.After(quiet):
			return false
		}
	}

	sigs <- syscall.SIGHUP
	first := next()
	if first == nil || isClosed(first) {
		t.Fatal("a deploy with nothing newer asked for")
	}
	sigs <- syscall.SIGTTIN // a scale: not newer
	if isClosed(first) {
		t.Fatal("a scale ended the deploy's probation")
	}
	sigs <- syscall.SIGHUP
	if !isClosed(first) {
		t.Fatal("a HUP did not end the running deploy's probation")
	}
	release <- struct{}{}
	scale := next() // the scale, queued first; then the deploy
	release <- struct{}{}
	_ = scale
	second := next()
	if isClosed(second) {
		t.Fatal("the second deploy has a newer one")
	}
	done := make(chan error, 1)
	reqs <- request{op: opRollback, run: job, done: done}
	if !isClosed(second) {
		t.Fatal("a rollback did not end the running deploy's probation")
	}
	release <- struct{}{}
	next()
	release <- struct{}{}
	if err := awaitOutcome(t, done); err != nil {
		t.Fatal(err)
	}
	sigs <- syscall.SIGTERM
	<-stopped
	<-result
}

// Every job a signal asked for and still queued at a hand-over is passed
// on to the new primary as that signal, in order: a scale too, not only
// a deploy (folded into one HUP).
func TestLoopHandOverPassesOnQueuedSignals(t *testing.T) {
	r := startLoop(t, false)
	r.sigs <- syscall.SIGHUP
	r.deploys.awaitBegun(t)
	for _, sig := range []syscall.Signal{syscall.SIGTTIN, syscall.SIGHUP, syscall.SIGTTOU, syscall.SIGTTIN, syscall.SIGHUP} {
		r.sigs <- sig
	}
	r.deploys.release <- errHandedOver
	want := []os.Signal{syscall.SIGTTIN, syscall.SIGHUP, syscall.SIGTTOU, syscall.SIGTTIN}
	if got := <-r.passed; !slices.Equal(got, want) {
		t.Fatalf("passed on %v, want %v", got, want)
	}
	<-r.handover
	r.end(t)
}
