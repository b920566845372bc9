//go:build linux

package control

import (
	"bufio"
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
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
	s := newServer(path, ln, nil, zap.NewNop())
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
