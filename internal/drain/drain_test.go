package drain

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/internal/loadgen"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// served is one drain.Serve running in the background.
type served struct {
	cancel context.CancelFunc
	done   chan error
	count  atomic.Int64
}

func (s *served) stop(t *testing.T, bound time.Duration) time.Duration {
	t.Helper()
	begin := time.Now()
	s.cancel()
	select {
	case err := <-s.done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(bound + 5*time.Second):
		t.Fatalf("Serve did not return within %v", bound+5*time.Second)
	}
	return time.Since(begin)
}

// start serves ln with a handler that answers "<name> pid=<name>" after a
// short random delay, so that requests are in flight when a drain starts.
func start(ln net.Listener, name string, timeout time.Duration) *served {
	s := &served{done: make(chan error, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		time.Sleep(time.Duration(rand.IntN(1500)) * time.Microsecond)
		s.count.Add(1)
		fmt.Fprintf(w, "%s pid=%s\n", name, name)
	})}
	go func() { s.done <- Serve(ctx, srv, ln, timeout) }()
	return s
}

// shared returns a listening socket that the test keeps open, as the
// handoff primary does; fork hands out a new fd of that same socket, as a
// worker inherits it.
func shared(t *testing.T) (master *net.TCPListener, fork func() net.Listener) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	master = ln.(*net.TCPListener)
	t.Cleanup(func() { master.Close() })
	return master, func() net.Listener {
		f, err := master.File()
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		l, err := net.FileListener(f)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
}

// TestRollingDrainLosesNothing replaces the server of a shared socket
// several times under load, draining the old one each time, and requires
// that not one request fails. The load is POSTs with bodies that cannot be
// replayed, so the client Transport cannot retry a failure away.
func TestRollingDrainLosesNothing(t *testing.T) {
	for _, tc := range []struct {
		name              string
		keepAlive, newCon int
	}{
		{"keepalive", 16, 0},
		{"newconn", 0, 16},
		{"mixed", 8, 8},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const timeout = 5 * time.Second
			master, fork := shared(t)
			cur := start(fork(), "g0", timeout)
			run := loadgen.Start(context.Background(), loadgen.Config{
				URL:       "http://" + master.Addr().String() + "/",
				KeepAlive: tc.keepAlive, NewConn: tc.newCon,
				Duration: 20 * time.Second, MaxRequests: 400_000,
			})
			waitFor(t, func() bool { return cur.count.Load() >= 50 })
			for gen := 1; gen <= 3; gen++ {
				next := start(fork(), fmt.Sprintf("g%d", gen), timeout)
				time.Sleep(100 * time.Millisecond)
				old := cur.count.Load()
				took := cur.stop(t, timeout)
				t.Logf("gen %d drained in %v after %d requests", gen-1, took, old)
				if took > timeout {
					t.Errorf("drain took %v, bound %v", took, timeout)
				}
				cur = next
				waitFor(t, func() bool { return cur.count.Load() >= 50 })
			}
			res := run.Stop()
			cur.stop(t, timeout)
			t.Log(res)
			if res.Failures != 0 {
				t.Fatalf("%d of %d requests failed: %v", res.Failures, res.Requests, res.FirstErrors)
			}
			for gen := 0; gen <= 3; gen++ {
				if res.Versions[fmt.Sprintf("g%d", gen)] == 0 {
					t.Errorf("generation %d served nothing: %v", gen, res.Versions)
				}
			}
		})
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// A request in flight when the drain starts completes, and the drain ends
// soon after it.
func TestSlowRequestCompletes(t *testing.T) {
	ln := listen(t)
	started := make(chan struct{})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		time.Sleep(300 * time.Millisecond)
		fmt.Fprintln(w, "slow done")
	})}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, srv, ln, 5*time.Second) }()

	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	type reply struct {
		body string
		err  error
	}
	got := make(chan reply, 1)
	go func() {
		resp, err := (&http.Client{Transport: tr}).Post("http://"+ln.Addr().String()+"/slow", "text/plain", strings.NewReader("x"))
		if err != nil {
			got <- reply{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		got <- reply{string(b), err}
	}()
	<-started
	begin := time.Now()
	cancel()
	r := <-got
	if r.err != nil || r.body != "slow done\n" {
		t.Fatalf("slow request: %q %v", r.body, r.err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	// The slow request's connection went idle without Connection: close;
	// it is closed after the grace (500ms here).
	if took := time.Since(begin); took < 250*time.Millisecond || took > 2*time.Second {
		t.Fatalf("drain took %v", took)
	}
}

func rawRequest(t *testing.T, c net.Conn, br *bufio.Reader) *http.Response {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// A request on a keep-alive connection after the drain began is answered,
// with Connection: close, and the server then closes the connection.
func TestRequestAfterDrainGetsConnectionClose(t *testing.T) {
	ln := listen(t)
	addr := ln.Addr().String()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, srv, ln, 5*time.Second) }()

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	if resp := rawRequest(t, c, br); resp.Close {
		t.Fatal("first response already says Connection: close")
	}
	cancel()
	// The listener is closed after the drain flag is set: once dialing is
	// refused, the drain is under way.
	waitFor(t, func() bool {
		d, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			d.Close()
		}
		return err != nil
	})
	if resp := rawRequest(t, c, br); !resp.Close || resp.StatusCode != 200 {
		t.Fatalf("second response: status %d close=%v", resp.StatusCode, resp.Close)
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("want EOF after Connection: close, got %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
}

// An idle keep-alive connection whose client stays silent is closed after
// the grace: the drain does not wait for the bound.
func TestSilentIdleConnClosedAfterGrace(t *testing.T) {
	ln := listen(t)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, srv, ln, 10*time.Second) }()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	rawRequest(t, c, br)
	begin := time.Now()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	took := time.Since(begin)
	if took < MaxIdleGrace-50*time.Millisecond || took > MaxIdleGrace+time.Second {
		t.Fatalf("drain took %v, want about the %v grace", took, MaxIdleGrace)
	}
	if _, err := br.ReadByte(); err == nil {
		t.Fatal("idle connection still open")
	}
}

// A client that holds a connection open does not hold up the drain beyond
// its bound.
func TestBoundWhenClientHoldsConn(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	for _, tc := range []struct {
		name string
		send string
	}{
		// Half a request: the server is reading it, so it is not idle.
		{"partial-headers", "POST / HTTP/1.1\r\nHost: x\r\n"},
		// A handler that does not return before the bound.
		{"stuck-handler", "POST /stuck HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln := listen(t)
			inHandler := make(chan struct{}, 1)
			accepted := make(chan struct{}, 1)
			srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				inHandler <- struct{}{}
				<-release
			}), ConnState: func(_ net.Conn, st http.ConnState) {
				if st == http.StateNew {
					select {
					case accepted <- struct{}{}:
					default:
					}
				}
			}}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			const bound = 400 * time.Millisecond
			go func() { done <- Serve(ctx, srv, ln, bound) }()
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			io.WriteString(c, tc.send)
			if strings.Contains(tc.send, "stuck") {
				<-inHandler
			} else {
				// Accepted (on a loaded machine that can take a while):
				// the bytes are then the server's to read, or waiting
				// in the socket, where the drain sees them.
				select {
				case <-accepted:
				case <-time.After(10 * time.Second):
					t.Fatal("connection not accepted within 10s")
				}
			}
			begin := time.Now()
			cancel()
			err = <-done
			took := time.Since(begin)
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("want DeadlineExceeded, got %v", err)
			}
			if took < bound-20*time.Millisecond || took > bound+time.Second {
				t.Fatalf("Serve returned after %v, bound %v", took, bound)
			}
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("connection not closed by Close: %v", err)
			}
		})
	}
}

// A listener that fails makes Serve return its error.
func TestServeErrorReturned(t *testing.T) {
	ln := listen(t)
	ln.Close()
	err := Serve(context.Background(), &http.Server{}, ln, time.Second)
	if err == nil || !errors.Is(err, net.ErrClosed) {
		t.Fatalf("want the accept error, got %v", err)
	}
}
