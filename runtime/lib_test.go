package runtime

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/internal/loadgen"
)

// sharedListener returns a second listener on ln's socket, as a second
// worker process would have it.
func sharedListener(t *testing.T, ln net.Listener) net.Listener {
	t.Helper()
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	l2, err := net.FileListener(f)
	if err != nil {
		t.Fatal(err)
	}
	return l2
}

// serveWorker runs Worker.Serve for a worker named name on ln until the
// returned cancel, and reports Serve's result on the channel.
func serveWorker(ln net.Listener, name string, drain time.Duration) (context.CancelFunc, <-chan error) {
	ctx, cancel := context.WithCancel(context.Background())
	cfg := Config{DrainTimeout: drain}
	cfg.setDefaults()
	w := newWorker(ctx, &cfg, 0, 1)
	w.ready = func() {}
	srv := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(rw, "%s pid=0\n", name)
	})}
	done := make(chan error, 1)
	go func() { done <- w.Serve(srv, ln) }()
	return cancel, done
}

// Worker.Serve drains with zero lost requests: two workers share one
// socket under keep-alive and new-connection load of non-replayable POSTs;
// one drains mid-load, and not one request fails.
func TestWorkerServeDrainsUnderLoad(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lnB := sharedListener(t, ln)
	stopA, doneA := serveWorker(ln, "a", 10*time.Second)
	stopB, doneB := serveWorker(lnB, "b", 10*time.Second)
	defer stopB()

	load := loadgen.Start(context.Background(), loadgen.Config{
		URL: "http://" + ln.Addr().String() + "/", KeepAlive: 8, NewConn: 8,
		Duration: time.Minute, MaxRequests: 1_000_000, Timeout: 5 * time.Second, Pause: time.Millisecond,
	})
	defer load.Stop()
	waitLoad := func(n int64) {
		t.Helper()
		start := load.Snapshot().Requests
		end := time.Now().Add(20 * time.Second)
		for load.Snapshot().Requests < start+n {
			if time.Now().After(end) {
				t.Fatalf("fewer than %d requests in 20s: %s", n, load.Snapshot())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitLoad(500)
	if load.Snapshot().Versions["a"] == 0 {
		t.Fatalf("worker a served nothing before its drain: %s", load.Snapshot())
	}
	stopA()
	select {
	case err := <-doneA:
		if err != nil {
			t.Fatalf("drain of a: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("worker a did not drain within its bound")
	}
	waitLoad(500)
	res := load.Stop()
	t.Logf("load: %s", res)
	if res.Failures != 0 {
		t.Errorf("%d of %d requests failed while a worker drained: %v %q", res.Failures, res.Requests, res.FailuresByKind, res.FirstErrors)
	}
	if res.Versions["b"] == 0 || res.Versions["a"] == 0 {
		t.Errorf("both workers should have served: %v", res.Versions)
	}
	stopB()
	if err := <-doneB; err != nil && !errors.Is(err, context.Canceled) {
		t.Errorf("drain of b: %v", err)
	}
}

// The drain bound leaves a margin before the primary's SIGKILL.
func TestServeDrainTimeout(t *testing.T) {
	for in, want := range map[time.Duration]time.Duration{
		30 * time.Second: 29 * time.Second, 5 * time.Second: 4500 * time.Millisecond, time.Second: 900 * time.Millisecond,
	} {
		if got := serveDrainTimeout(in); got != want {
			t.Errorf("serveDrainTimeout(%v) = %v, want %v", in, got, want)
		}
	}
}

// A Hub no primary runs yet, or given a value JSON cannot hold, says so.
func TestHubErrors(t *testing.T) {
	h := NewHub(nil)
	if err := h.Send(0, "x"); !errors.Is(err, ErrNoPool) {
		t.Errorf("Send before Run: %v", err)
	}
	if _, err := h.Broadcast("x"); !errors.Is(err, ErrNoPool) {
		t.Errorf("Broadcast before Run: %v", err)
	}
	if err := h.Send(0, func() {}); err == nil {
		t.Error("Send(func) succeeded")
	}
	w := &Worker{}
	if err := w.Send(1); !errors.Is(err, ErrNoChannel) {
		t.Errorf("Worker.Send without a channel: %v", err)
	}
}

// Main refuses an App it cannot run, with one clear error.
func TestMainMistakes(t *testing.T) {
	if err := Main(context.Background(), App{}); err == nil || err.Error() != "runtime.App: Worker is required" {
		t.Errorf("no Worker: %v", err)
	}
	err := Main(context.Background(), App{Config: Config{Command: []string{"x"}}, Worker: func(context.Context, *Worker) error { return nil }})
	if err == nil {
		t.Error("Config.Command accepted")
	}
}
