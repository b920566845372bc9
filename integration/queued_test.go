//go:build linux

package integration

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/internal/loadgen"
)

// TestQueuedConnectionsSurviveAWorkerKill: connections waiting in a
// worker's accept queue when the worker is killed are not reset: the
// socket stays open in the primary (with a socket per worker, the slot's
// own socket is steered away and handed to the replacement, queue and
// all), and the replacement answers every one of them in full. One worker,
// so that every connection is queued on its socket; it does not accept
// (--stall-accept-file) until it is dead.
func TestQueuedConnectionsSurviveAWorkerKill(t *testing.T) {
	t.Parallel()
	stall := filepath.Join(t.TempDir(), "stall")
	writeBytes(t, stall, nil, 0o644)
	p := StartPrimary(t, Options{Workers: 1, Args: []string{"--stall-accept-file", stall}})
	live := p.LiveWorkers()
	if len(live) != 1 {
		t.Fatalf("%d live workers, want 1: %v", len(live), live)
	}
	var victim int
	for pid := range live {
		victim = pid
	}

	const n = 6
	body := "queued\n"
	request := fmt.Sprintf("POST / HTTP/1.1\r\nHost: %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		p.Addr(), len(body), body)
	conns := make([]net.Conn, n)
	for i := range conns {
		c, err := net.DialTimeout("tcp", p.Addr(), 5*time.Second)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		t.Cleanup(func() { c.Close() })
		if _, err := io.WriteString(c, request); err != nil {
			t.Fatalf("connection %d: writing the request: %v", i, err)
		}
		conns[i] = c
	}
	// Every one waits in an accept queue on the port (the kernel's count,
	// whatever handoff reports).
	port := p.port()
	queued := 0
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		queued = 0
		for _, s := range listeningSockets(port) {
			queued += s.queued
		}
		if queued >= n {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("%d connections queued on port %d, want %d: %v", queued, port, n, listeningSockets(port))
		}
	}
	t.Logf("status --json workers with %d queued: %+v", queued, p.Status().Workers)

	mark := p.Log.Len()
	p.Signal(victim, syscall.SIGKILL)
	if _, ok := p.Log.Wait(mark, 10*time.Second, func(e Event) bool {
		return e.Msg == "worker exited" && e.Int0("pid") == victim
	}); !ok {
		t.Fatalf("worker %d: no \"worker exited\" within 10s of SIGKILL\n%s", victim, p.Tail(30))
	}
	// Dead: whatever accepts now is its replacement.
	if err := os.Remove(stall); err != nil {
		t.Fatal(err)
	}

	deadline := time.Now().Add(30 * time.Second)
	pids := map[int]int{}
	for i, c := range conns {
		c.SetDeadline(deadline)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Errorf("connection %d: no answer (%s): %v", i, loadgen.Classify(err), err)
			continue
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Errorf("connection %d: answer cut short (%s): %v", i, loadgen.Classify(err), err)
			continue
		}
		r := parseReply(resp.StatusCode, string(b))
		if r.Status != 200 || r.Version != "v1" || r.PID <= 0 || r.PID == victim || r.Slot != 0 {
			t.Errorf("connection %d: answer %d %q, want 200 from the replacement in slot 0 (the killed worker was %d)", i, r.Status, b, victim)
			continue
		}
		pids[r.PID]++
	}
	t.Logf("the %d queued connections were answered by %v (worker %d killed)", n, pids, victim)
	if len(pids) > 1 {
		t.Errorf("answered by %d processes %v, want the one replacement", len(pids), pids)
	}
	if p.Exited() {
		t.Errorf("primary %d exited", p.PID)
	}
}
