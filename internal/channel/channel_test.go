package channel

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func pair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	a, err := FromFDConn(fds[0])
	if err != nil {
		t.Fatal(err)
	}
	b, err := FromFDConn(fds[1])
	if err != nil {
		t.Fatal(err)
	}
	return a, b
}

type inbox struct {
	mu   sync.Mutex
	got  []string
	more chan struct{}
}

func newInbox() *inbox { return &inbox{more: make(chan struct{}, 1)} }

func (i *inbox) add(b []byte) {
	i.mu.Lock()
	i.got = append(i.got, string(b))
	i.mu.Unlock()
	select {
	case i.more <- struct{}{}:
	default:
	}
}

func (i *inbox) wait(t *testing.T, n int) []string {
	t.Helper()
	end := time.After(10 * time.Second)
	for {
		i.mu.Lock()
		if len(i.got) >= n {
			out := append([]string(nil), i.got...)
			i.mu.Unlock()
			return out
		}
		i.mu.Unlock()
		select {
		case <-i.more:
		case <-end:
			t.Fatalf("got %d messages, want %d", len(i.got), n)
		}
	}
}

// Values arrive in order, one per line, both ways, including large ones.
func TestOrderAndBothWays(t *testing.T) {
	a, b := pair(t)
	ia, ib := newInbox(), newInbox()
	ca := New(a, Options{OnMessage: ia.add})
	cb := New(b, Options{OnMessage: ib.add})
	defer closeWait(ca)
	defer closeWait(cb)
	const n = 500
	big := strings.Repeat("x", 200<<10) // longer than the read buffer
	for i := 0; i < n; i++ {
		v := map[string]any{"n": i}
		if i == 7 {
			v["big"] = big
		}
		if err := ca.Send(v); err != nil {
			t.Fatal(err)
		}
	}
	if err := cb.Send("back"); err != nil {
		t.Fatal(err)
	}
	got := ib.wait(t, n)
	for i, line := range got {
		var v struct {
			N   int
			Big string
		}
		if err := json.Unmarshal([]byte(line), &v); err != nil || v.N != i {
			t.Fatalf("message %d = %.80q (%v)", i, line, err)
		}
		if i == 7 && v.Big != big {
			t.Fatalf("big message mangled: %d bytes", len(v.Big))
		}
	}
	if back := ia.wait(t, 1); back[0] != `"back"` {
		t.Fatalf("got %q", back[0])
	}
}

// A side that does not read makes Send fail with ErrQueueFull once the
// socket buffer and the queue are full; Send never blocks.
func TestSlowReaderNeverBlocks(t *testing.T) {
	a, b := pair(t)
	defer b.Close()
	ca := New(a, Options{Queue: 8})
	defer closeWait(ca)
	payload := strings.Repeat("y", 64<<10)
	start := time.Now()
	var err error
	for i := 0; i < 10000 && err == nil; i++ {
		err = ca.Send(payload)
	}
	if !errors.Is(err, ErrQueueFull) {
		t.Fatalf("Send to a reader that never reads: %v, want ErrQueueFull", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("sending took %v", d)
	}
}

// The other side closing ends the channel: OnClose runs, Send fails.
func TestPeerClose(t *testing.T) {
	a, b := pair(t)
	closed := make(chan error, 1)
	ca := New(a, Options{OnClose: func(err error) { closed <- err }})
	defer closeWait(ca)
	b.Close()
	select {
	case err := <-closed:
		if err != nil {
			t.Fatalf("orderly close reported %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no OnClose after the peer closed")
	}
	if err := ca.Send(1); !errors.Is(err, ErrClosed) {
		t.Fatalf("Send after close: %v", err)
	}
}

// A value that cannot be encoded is an error, not a broken line.
func TestUnencodable(t *testing.T) {
	a, b := pair(t)
	defer b.Close()
	ca := New(a, Options{})
	defer closeWait(ca)
	if err := ca.Send(func() {}); err == nil {
		t.Fatal("Send(func) succeeded")
	}
	if err := ca.Send(fmt.Errorf("x")); err != nil {
		t.Fatal(err) // encodes as {}
	}
}

func closeWait(c *Conn) {
	c.Close()
	<-c.Done()
}
