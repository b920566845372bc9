package runtime

import (
	"context"
	"errors"
	"os"
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

func (f *fakeDeploys) awaitBegun(t *testing.T) {
	t.Helper()
	select {
	case <-f.begun:
	case <-time.After(5 * time.Second):
		t.Fatal("no deploy began")
	}
}

func (f *fakeDeploys) noneBegun(t *testing.T) {
	t.Helper()
	select {
	case <-f.begun:
		t.Fatal("a deploy began that should not have")
	case <-time.After(50 * time.Millisecond):
	}
}

type loopRun struct {
	sigs     chan os.Signal
	deploys  *fakeDeploys
	result   chan error
	stopped  chan struct{}
	handover chan bool
}

func startLoop(t *testing.T, pending bool) *loopRun {
	t.Helper()
	// Unbuffered: a send returns once the loop has taken the signal.
	r := &loopRun{sigs: make(chan os.Signal), deploys: newFakeDeploys(), result: make(chan error, 1),
		stopped: make(chan struct{}, 1), handover: make(chan bool, 1)}
	go func() {
		r.result <- deployLoop(context.Background(), zap.NewNop(), r.sigs, pending, r.deploys.deploy,
			func() error { r.stopped <- struct{}{}; return nil },
			func(pending bool) error { r.handover <- pending; return nil })
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
