//go:build linux

package control

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
)

// TestConnectionBound: the server holds at most maxConns connections. One
// more, while all are fresh, is told to retry and closed; once the oldest
// has stayed silent past idleGrace, a new one takes its place (the oldest
// is told to retry) and is served.
func TestConnectionBound(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	s := newServer(path, ln, &fakeHandler{}, zap.NewNop())
	s.Serve()
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		for _, c := range conns {
			c.Close()
		}
	})
	dial := func() net.Conn {
		t.Helper()
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(30 * time.Second))
		conns = append(conns, c)
		return c
	}
	readReply := func(c net.Conn) Reply {
		t.Helper()
		var rep Reply
		line, err := bufio.NewReader(c).ReadBytes('\n')
		if err != nil || json.Unmarshal(line, &rep) != nil {
			t.Fatalf("no reply: %q, %v", line, err)
		}
		return rep
	}
	first := time.Now()
	for i := 0; i < maxConns; i++ {
		dial()
	}
	end := time.Now().Add(20 * time.Second)
	for {
		s.mu.Lock()
		n := len(s.conns)
		s.mu.Unlock()
		if n == maxConns {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("the server holds %d connections, want %d", n, maxConns)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if time.Since(first) < idleGrace {
		rep := readReply(dial())
		if rep.OK || !rep.Retry || !strings.Contains(rep.Error, "busy") {
			t.Errorf("a connection past the bound: %+v, want a busy reply that asks to retry", rep)
		}
	}
	// Past the grace, a new connection evicts the oldest silent one.
	time.Sleep(time.Until(first.Add(idleGrace)))
	for {
		c := dial()
		c.Write([]byte("garbage\n"))
		rep := readReply(c)
		if strings.HasPrefix(rep.Error, "bad request") {
			break
		}
		if !rep.Retry || time.Now().After(end) {
			t.Fatalf("a connection past the grace: %+v, want it served", rep)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if rep := readReply(conns[0]); !rep.Retry {
		t.Errorf("the oldest silent connection: %+v, want a reply that asks to retry", rep)
	}
	s.mu.Lock()
	n := len(s.conns)
	s.mu.Unlock()
	if n > maxConns {
		t.Errorf("the server holds %d connections, more than %d", n, maxConns)
	}
}

// fakeHandler answers as a primary would, and records what it was asked.
type fakeHandler struct {
	mu      sync.Mutex
	scaled  [2]int
	stopped bool
	// retry: Reload answers that the primary handed over meanwhile.
	retry bool
	// rolling is closed when Rollback is asked for.
	rolling chan struct{}
}

func (h *fakeHandler) Status() Status {
	return Status{Primary: PrimaryStatus{Pid: 7, Generation: 3}, Workers: []WorkerStatus{}}
}

func (h *fakeHandler) Reload(ctx context.Context) Reply {
	if h.retry {
		return Reply{Retry: true}
	}
	return Reply{OK: true, Generation: 4, Message: "done: generation 4 serving"}
}

func (h *fakeHandler) Rollback(ctx context.Context) Reply {
	// Waits for the server to close, as a job the primary drops.
	close(h.rolling)
	<-ctx.Done()
	return Reply{Error: "aborted: the primary is shutting down"}
}

func (h *fakeHandler) Scale(ctx context.Context, workers, delta int) Reply {
	h.mu.Lock()
	h.scaled = [2]int{workers, delta}
	h.mu.Unlock()
	return Reply{OK: true, Workers: 5}
}

func (h *fakeHandler) Stop() {
	h.mu.Lock()
	h.stopped = true
	h.mu.Unlock()
}

// ask sends one request line to the server at path and reads its reply;
// the connection is returned open.
func ask(t *testing.T, path, line string) (Reply, net.Conn) {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write([]byte(line + "\n"))
	var rep Reply
	if err := json.NewDecoder(c).Decode(&rep); err != nil {
		t.Fatalf("%s: no reply: %v", line, err)
	}
	return rep, c
}

// The server hands each op to its Handler and writes the answer with its
// own pid; a retry the handler answers says who to ask; a stop's
// connection stays open until Close, which also ends what a pending
// request waits for (its client sees the connection end).
func TestHandlerAnswers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	h := &fakeHandler{}
	s := newServer(path, ln, h, zap.NewNop())
	s.Serve()
	t.Cleanup(func() { s.Close(false) })
	if rep, _ := ask(t, path, `{"op":"status"}`); !rep.OK || rep.Pid != os.Getpid() || rep.Status == nil || rep.Status.Primary.Generation != 3 {
		t.Errorf("status: %+v", rep)
	}
	if rep, _ := ask(t, path, `{"op":"reload"}`); !rep.OK || rep.Generation != 4 || rep.Pid != os.Getpid() {
		t.Errorf("reload: %+v", rep)
	}
	if rep, _ := ask(t, path, `{"op":"scale","delta":-2}`); !rep.OK || rep.Workers != 5 || h.scaled != [2]int{0, -2} {
		t.Errorf("scale: %+v, handler asked for %v", rep, h.scaled)
	}
	h.retry = true
	if rep, _ := ask(t, path, `{"op":"reload"}`); rep.OK || !rep.Retry || rep.Error != "handed over to a new primary" {
		t.Errorf("reload pending at a hand-over: %+v", rep)
	}
	// A rollback that waits for its job, pending at Close.
	h.rolling = make(chan struct{})
	rb, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer rb.Close()
	rb.SetDeadline(time.Now().Add(10 * time.Second))
	rb.Write([]byte(`{"op":"rollback"}` + "\n"))
	<-h.rolling
	rep, stop := ask(t, path, `{"op":"stop"}`)
	if !rep.OK || rep.Message != "stopping" || !h.stopped {
		t.Errorf("stop: %+v (handler asked: %v)", rep, h.stopped)
	}
	ended := make(chan error, 1)
	go func() {
		_, err := stop.Read(make([]byte, 1))
		ended <- err
	}()
	select {
	case err := <-ended:
		t.Fatalf("a stop's connection ended before Close: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	s.Close(false)
	if err := <-ended; err == nil {
		t.Error("a stop's connection still open after Close")
	}
	// Close returned: the rollback's wait ended with the server, and its
	// connection ends, answered with the handler's reply or not at all.
	got, err := io.ReadAll(rb)
	if err != nil || len(got) > 0 && !strings.Contains(string(got), `"error":"aborted: the primary is shutting down"`) {
		t.Errorf("a rollback pending at Close: %q, %v; want its connection ended", got, err)
	}
}
