//go:build linux

package integration

import (
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// hostileConns holds control connections a test opened and never uses
// as a client should.
type hostileConns struct {
	mu    sync.Mutex
	conns []net.Conn
}

func (h *hostileConns) add(c net.Conn) {
	h.mu.Lock()
	h.conns = append(h.conns, c)
	h.mu.Unlock()
}

func (h *hostileConns) closeAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, c := range h.conns {
		c.Close()
	}
	h.conns = nil
}

// TestControlHostileClients: while the workers serve HTTP load and a
// deploy runs, control clients misbehave: silent connections held past
// the server's timeout, a flood of 1000 connections held open, clients
// that send a request and never read the reply. The primary runs with a
// bound on its open files, as a service with LimitNOFILE has. handoff
// reload and handoff status still work, no HTTP request fails, the
// server ends the silent connections, and the primary's fd count returns
// to its plateau once the clients have gone.
func TestControlHostileClients(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{Workers: 2})
	path := p.ControlPath()
	load := startLoad(t, p.URL())
	// A first deploy: the primary then holds what it holds after any
	// deploy (the previous generation's pin).
	p.Install("v2")
	p.CtlOK("reload")
	p.WaitServing(p.URL(), "v2", 20*time.Second)
	plateau, err := fdCount(p.PID)
	if err != nil {
		t.Fatal(err)
	}
	// Room for a deploy, not for a thousand connections.
	limit := uint64(plateau + 200)
	if err := unix.Prlimit(p.PID, unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: limit, Max: limit}, nil); err != nil {
		t.Fatalf("prlimit: %v", err)
	}
	t.Logf("primary fds: plateau %d, limit %d", plateau, limit)

	var hostile hostileConns
	defer hostile.closeAll()
	dial := func() net.Conn {
		c, err := net.DialTimeout("unix", path, time.Second)
		if err != nil {
			return nil
		}
		hostile.add(c)
		return c
	}
	// Silent: connected, never a byte. The server must end them.
	var silent []net.Conn
	for i := 0; i < 10; i++ {
		if c := dial(); c != nil {
			silent = append(silent, c)
		}
	}
	// Never read: a request, then nothing.
	for i := 0; i < 10; i++ {
		if c := dial(); c != nil {
			c.Write([]byte(`{"op":"status"}` + "\n"))
		}
	}
	// The flood.
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 250; i++ {
				dial()
			}
		}()
	}
	wg.Wait()
	silentSince := time.Now()

	// status gives up after 10s; reload waits, but should not have to.
	start := time.Now()
	if r := p.Ctl("status"); r.code != 0 {
		t.Errorf("status among hostile clients: %s", r)
	}
	t.Logf("status among hostile clients took %s", time.Since(start).Round(time.Millisecond))
	p.Install("v3")
	start = time.Now()
	r := p.Ctl("reload")
	took := time.Since(start)
	t.Logf("reload among hostile clients took %s", took.Round(time.Millisecond))
	if r.code != 0 || !strings.Contains(r.stdout, "done: generation 3") {
		t.Errorf("reload among hostile clients: %s\n%s", r, p.Tail(30))
	}
	if took > 30*time.Second {
		t.Errorf("reload among hostile clients took %s", took)
	}
	for i := 0; i < 3; i++ {
		if r := p.Ctl("status"); r.code != 0 {
			t.Errorf("status among hostile clients: %s", r)
		}
	}
	p.WaitServing(p.URL(), "v3", 20*time.Second)
	waitRequests(t, load, 200, 30*time.Second)
	checkLoad(t, load, "v3")

	// The silent connections end from the server's side (an answer
	// telling them to try again, or none), within its timeout.
	for i, c := range silent {
		// Long past the server's timeout (10s), a closed connection
		// reads its end at once.
		deadline := silentSince.Add(30 * time.Second)
		if soon := time.Now().Add(2 * time.Second); deadline.Before(soon) {
			deadline = soon
		}
		c.SetReadDeadline(deadline)
		buf := make([]byte, 512)
		for {
			if _, err := c.Read(buf); err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					t.Errorf("silent connection %d still open %s after it was made", i, time.Since(silentSince).Round(time.Second))
				}
				break
			}
		}
	}
	hostile.closeAll()
	end := time.Now().Add(30 * time.Second)
	for {
		n, err := fdCount(p.PID)
		if err != nil {
			t.Fatal(err)
		}
		if n <= plateau {
			t.Logf("primary fds back to %d (plateau %d)", n, plateau)
			break
		}
		if time.Now().After(end) {
			links, _ := fdLinks(p.PID)
			t.Fatalf("primary fds: %d, plateau %d, 30s after the hostile clients left: %v", n, plateau, links)
		}
		time.Sleep(100 * time.Millisecond)
	}
	p.CtlOK("status")
}
