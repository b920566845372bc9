package loadgen

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func okServer(t *testing.T) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.Error(w, "want POST", http.StatusMethodNotAllowed)
			return
		}
		io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "v7 pid=4242 worker=1 gen=1\n")
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestCountsSuccesses(t *testing.T) {
	srv := okServer(t)
	run := Start(context.Background(), Config{
		URL: srv.URL + "/x", KeepAlive: 3, NewConn: 3,
		Duration: 300 * time.Millisecond, MaxRequests: 500,
	})
	res := run.Wait()
	t.Log(res)
	if res.Requests == 0 || res.Failures != 0 {
		t.Fatalf("want requests and no failures: %v", res)
	}
	if res.Requests > 500 {
		t.Fatalf("MaxRequests exceeded: %d", res.Requests)
	}
	if res.Versions["v7"] != res.Requests || res.PIDs["4242"] != res.Requests {
		t.Fatalf("versions/pids not counted: %v %v", res.Versions, res.PIDs)
	}
	if res.P50 <= 0 || res.P50 > res.P99 || res.P99 > res.P999 || res.P999 > res.Max {
		t.Fatalf("bad percentiles: %v", res)
	}
}

// Observe is told of every request, with its times, version and pid.
func TestObserve(t *testing.T) {
	srv := okServer(t)
	var mu sync.Mutex
	var got []Sample
	res := Start(context.Background(), Config{
		URL: srv.URL, KeepAlive: 1, NewConn: 1, Duration: 5 * time.Second, MaxRequests: 20,
		Observe: func(s Sample) {
			mu.Lock()
			got = append(got, s)
			mu.Unlock()
		},
	}).Wait()
	mu.Lock()
	defer mu.Unlock()
	if int64(len(got)) != res.Requests || len(got) != 20 {
		t.Fatalf("%d samples of %d requests", len(got), res.Requests)
	}
	for _, s := range got {
		if s.Version != "v7" || s.PID != "4242" || s.Err != nil || s.End.Before(s.Begin) {
			t.Fatalf("sample %+v", s)
		}
	}
}

func TestMaxRequestsIsExact(t *testing.T) {
	srv := okServer(t)
	res := Start(context.Background(), Config{
		URL: srv.URL, KeepAlive: 4, NewConn: 4, Duration: 10 * time.Second, MaxRequests: 37,
	}).Wait()
	if res.Requests != 37 || res.Failures != 0 {
		t.Fatalf("want exactly 37 OK requests: %v", res)
	}
	if res.Elapsed > 5*time.Second {
		t.Fatalf("run did not stop at MaxRequests: %v", res.Elapsed)
	}
}

func TestStopAndSnapshot(t *testing.T) {
	srv := okServer(t)
	run := Start(context.Background(), Config{
		URL: srv.URL, KeepAlive: 2, Duration: 10 * time.Second, Pause: time.Millisecond,
	})
	deadline := time.Now().Add(5 * time.Second)
	for run.Snapshot().Requests < 10 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	begin := time.Now()
	res := run.Stop()
	if time.Since(begin) > 2*time.Second {
		t.Fatalf("Stop took %v", time.Since(begin))
	}
	if res.Requests < 10 || res.Failures != 0 {
		t.Fatalf("unexpected: %v", res)
	}
	again := run.Wait()
	if again.Requests != res.Requests || run.Snapshot().Requests != res.Requests {
		t.Fatalf("totals moved after Stop")
	}
}

func TestParentContextEndsRun(t *testing.T) {
	srv := okServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	run := Start(ctx, Config{URL: srv.URL, NewConn: 2, Duration: 10 * time.Second})
	time.Sleep(50 * time.Millisecond)
	cancel()
	res := run.Wait()
	if res.Failures != 0 || res.Elapsed > 5*time.Second {
		t.Fatalf("cancel should end the run cleanly: %v", res)
	}
}

func TestStatusIsAFailure(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "boom", http.StatusInternalServerError)
	}))
	defer srv.Close()
	res := Start(context.Background(), Config{
		URL: srv.URL, KeepAlive: 1, NewConn: 1, Duration: 5 * time.Second, MaxRequests: 20,
	}).Wait()
	if res.Requests != 20 || res.Failures != 20 || res.FailuresByKind["status_500"] != 20 {
		t.Fatalf("every 500 must be a failure: %v", res)
	}
	if len(res.FirstErrors) != maxFirstErrors || len(res.Versions) != 0 {
		t.Fatalf("first errors / versions: %v", res)
	}
}

// A server that hangs up without answering must show up as failures, both
// on fresh connections and on reused keep-alive connections.
func TestHangupIsAFailure(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close()
		}
	}))
	defer srv.Close()
	res := Start(context.Background(), Config{
		URL: srv.URL, KeepAlive: 1, NewConn: 1, Duration: 5 * time.Second, MaxRequests: 10,
	}).Wait()
	if res.Requests != 10 || res.Failures != 10 {
		t.Fatalf("every hang-up must be a failure: %v", res)
	}
	if res.FailuresByKind[KindEOF]+res.FailuresByKind[KindConnReset] != 10 {
		t.Fatalf("unexpected kinds: %v", res.FailuresByKind)
	}
}

// The Transport silently retries a request that failed on a reused
// connection when it can replay the body. Ours cannot be replayed: a server
// that answers the first request of each connection and hangs up on the
// second must cost one failure per connection.
func TestReusedConnFailureNotHidden(t *testing.T) {
	var mu sync.Mutex
	seen := map[string]int{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		mu.Lock()
		seen[r.RemoteAddr]++
		n := seen[r.RemoteAddr]
		mu.Unlock()
		if n == 1 {
			fmt.Fprintln(w, "v1 pid=1")
			return
		}
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close()
		}
	}))
	defer srv.Close()
	res := Start(context.Background(), Config{
		URL: srv.URL, KeepAlive: 1, Duration: 5 * time.Second, MaxRequests: 10,
	}).Wait()
	// Connection 1: ok, fail. Connection 2: ok, fail. …
	if res.Requests != 10 || res.Failures != 5 {
		t.Fatalf("want 5 OK + 5 failed: %v", res)
	}
}

func TestRefusedIsAFailure(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	res := Start(context.Background(), Config{
		URL: "http://" + addr + "/", NewConn: 1, Duration: 5 * time.Second, MaxRequests: 3,
	}).Wait()
	if res.Failures != 3 || res.FailuresByKind[KindRefused] != 3 {
		t.Fatalf("want 3 refused: %v", res)
	}
}

func TestTimeoutIsAFailure(t *testing.T) {
	release := make(chan struct{})
	var inflight atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		inflight.Add(1)
		defer inflight.Add(-1)
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	res := Start(context.Background(), Config{
		URL: srv.URL, KeepAlive: 1, Duration: 5 * time.Second, MaxRequests: 2, Timeout: 100 * time.Millisecond,
	}).Wait()
	if res.Failures != 2 || res.FailuresByKind[KindTimeout] != 2 {
		t.Fatalf("want 2 timeouts: %v", res)
	}
	if res.Max < 100*time.Millisecond {
		t.Fatalf("max latency %v below the timeout", res.Max)
	}
}

func TestBuckets(t *testing.T) {
	prev := -1
	for _, v := range []int64{0, 1, 15, 16, 17, 31, 32, 1000, 1e6, 1e9, 1e12, 1 << 50} {
		b := bucketOf(v)
		if b < prev || b >= numBuckets {
			t.Fatalf("bucket of %d = %d (prev %d)", v, b, prev)
		}
		prev = b
		up := bucketUpper(b)
		if up < v || float64(up-v) > float64(v)/16+1 {
			t.Fatalf("value %d: bucket %d upper %d", v, b, up)
		}
		if b > 0 && bucketUpper(b-1) >= v {
			t.Fatalf("value %d also fits bucket %d", v, b-1)
		}
	}
}

func TestDurationRequired(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("want a panic for Duration 0")
		}
	}()
	Start(context.Background(), Config{URL: "http://127.0.0.1:1/"})
}

func TestUnixSocket(t *testing.T) {
	path := t.TempDir() + "/s.sock"
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "vunix pid=7 worker=0 gen=1\n")
	})}
	go srv.Serve(ln)
	defer srv.Close()
	res := Start(context.Background(), Config{
		URL: "http://unix/", UnixSocket: path, KeepAlive: 2, NewConn: 2,
		Duration: 5 * time.Second, MaxRequests: 40,
	}).Wait()
	if res.Requests != 40 || res.Failures != 0 || res.Versions["vunix"] != 40 {
		t.Fatalf("want 40 answers over the unix socket: %v", res)
	}
}

func TestWindowsSplitTheRun(t *testing.T) {
	var failing atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		if failing.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, "v1 pid=1\n")
	}))
	defer srv.Close()
	run := Start(context.Background(), Config{URL: srv.URL, KeepAlive: 2, Duration: 10 * time.Second, Pause: time.Millisecond})
	waitFor := func(n int64) {
		deadline := time.Now().Add(5 * time.Second)
		for run.Snapshot().Requests < n && time.Now().Before(deadline) {
			time.Sleep(2 * time.Millisecond)
		}
	}
	waitFor(20)
	run.BeginWindow()
	failing.Store(true)
	before := run.Snapshot().Requests
	waitFor(before + 20)
	failing.Store(false)
	run.EndWindow()
	waitFor(run.Snapshot().Requests + 20)
	res := run.Stop()
	t.Log(res, res.Steady, res.Windows)
	if res.Steady.Failures != 0 {
		t.Errorf("steady phase has failures: %+v", res.Steady)
	}
	if res.Windows.Failures == 0 || res.Windows.Failures != res.Failures || res.Windows.FailuresByKind["status_503"] != res.Failures {
		t.Errorf("window failures not counted in the window: %+v (all %v)", res.Windows, res.FailuresByKind)
	}
	if res.Steady.Requests+res.Windows.Requests != res.Requests || res.Steady.Completed+res.Windows.Completed != res.Requests {
		t.Errorf("phases do not add up: steady %+v windows %+v total %d", res.Steady, res.Windows, res.Requests)
	}
	if res.Windows.Duration <= 0 || res.Steady.Duration <= 0 || res.Windows.Duration+res.Steady.Duration != res.Elapsed {
		t.Errorf("phase durations: steady %v windows %v elapsed %v", res.Steady.Duration, res.Windows.Duration, res.Elapsed)
	}
	if res.Windows.RPS() <= 0 || res.Windows.P99 > res.Max {
		t.Errorf("window figures: %+v", res.Windows)
	}
}
