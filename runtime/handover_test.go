//go:build linux

package runtime

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// slotLog records the slots a side was asked to retire.
type slotLog struct {
	mu    sync.Mutex
	slots []int
	fail  map[int]error
}

func (l *slotLog) retire(slot int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.slots = append(l.slots, slot)
	return l.fail[slot]
}

func (l *slotLog) get() []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.slots)
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// peers connects a new primary's end to an old primary's end. The old end
// rolls back by asking the new end to retire each of rollback's slots.
func peers(t *testing.T, newLog, oldLog *slotLog, rollback []int, rollbackErr error) (newP, oldP *peer) {
	t.Helper()
	a, b := net.Pipe()
	var old *peer
	ready := make(chan struct{})
	old = newPeer(b, oldLog.retire, func() error {
		<-ready
		for _, slot := range rollback {
			if err := old.retire(context.Background(), slot); err != nil {
				return err
			}
		}
		return rollbackErr
	}, nil)
	close(ready)
	newP = newPeer(a, newLog.retire, nil, nil)
	t.Cleanup(func() {
		newP.close()
		old.close()
		<-newP.closed
		<-old.closed
	})
	return newP, old
}

func TestPeerRetire(t *testing.T) {
	newLog, oldLog := &slotLog{}, &slotLog{fail: map[int]error{9: errors.New("no slot 9")}}
	newP, _ := peers(t, newLog, oldLog, nil, nil)
	ctx := testCtx(t)
	for _, slot := range []int{0, 2, 1} {
		if err := newP.retire(ctx, slot); err != nil {
			t.Fatalf("retire %d: %v", slot, err)
		}
	}
	if got := oldLog.get(); fmt.Sprint(got) != "[0 2 1]" {
		t.Fatalf("old side retired %v", got)
	}
	if err := newP.retire(ctx, 9); err == nil || err.Error() != "no slot 9" {
		t.Fatalf("retire 9: %v", err)
	}
	if len(newLog.get()) != 0 {
		t.Fatal("new side asked to retire")
	}
}

func TestPeerAwaitSkipsOtherReplies(t *testing.T) {
	newP, oldP := peers(t, &slotLog{}, &slotLog{}, nil, nil)
	ctx := testCtx(t)
	go func() {
		oldP.send(message{Op: "hello", Pid: 1})
		oldP.send(message{Op: "state", Generation: 4})
	}()
	m, err := newP.await(ctx, "state")
	if err != nil || m.Generation != 4 {
		t.Fatalf("await state: %+v %v", m, err)
	}
}

func TestPeerAwaitFailsWhenOtherSideCloses(t *testing.T) {
	newP, oldP := peers(t, &slotLog{}, &slotLog{}, nil, nil)
	errc := make(chan error, 1)
	go func() {
		_, err := newP.await(testCtx(t), "state")
		errc <- err
	}()
	oldP.close()
	select {
	case err := <-errc:
		if err == nil || !strings.Contains(err.Error(), "went away while waiting for state") {
			t.Fatalf("await: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("await did not return")
	}
	// A retire asked after that fails too.
	if err := newP.retire(testCtx(t), 1); err == nil {
		t.Fatal("retire over a closed connection succeeded")
	}
}

func TestPeerAwaitEndsWithContext(t *testing.T) {
	newP, _ := peers(t, &slotLog{}, &slotLog{}, nil, nil)
	ctx, cancel := context.WithCancelCause(context.Background())
	cause := errors.New("shutting down")
	cancel(cause)
	if _, err := newP.await(ctx, "state"); err != cause {
		t.Fatalf("await: %v", err)
	}
}

// The old side rolls back by sending retire requests and waiting for their
// replies, which its reader must keep delivering while onRollback runs.
func TestPeerRollback(t *testing.T) {
	newLog, oldLog := &slotLog{}, &slotLog{}
	newP, _ := peers(t, newLog, oldLog, []int{0, 2}, nil)
	ctx := testCtx(t)
	if err := newP.send(message{Op: "rollback"}); err != nil {
		t.Fatal(err)
	}
	if _, err := newP.await(ctx, "rolledback"); err != nil {
		t.Fatalf("await rolledback: %v", err)
	}
	if got := newLog.get(); fmt.Sprint(got) != "[0 2]" {
		t.Fatalf("new side retired %v", got)
	}
	// The connection still works both ways.
	if err := newP.retire(ctx, 1); err != nil || fmt.Sprint(oldLog.get()) != "[1]" {
		t.Fatalf("retire after rollback: %v %v", err, oldLog.get())
	}
}

func TestPeerRollbackError(t *testing.T) {
	newP, _ := peers(t, &slotLog{}, &slotLog{}, []int{1}, errors.New("slot 1 would not start"))
	ctx := testCtx(t)
	newP.send(message{Op: "rollback"})
	if _, err := newP.await(ctx, "rolledback"); err == nil || err.Error() != "slot 1 would not start" {
		t.Fatalf("await rolledback: %v", err)
	}
}

// The wire format: one JSON object a line; a line that is not JSON and a
// rollback sent to the side that has no roll-back are ignored.
func TestPeerWireFormat(t *testing.T) {
	log := &slotLog{}
	a, b := net.Pipe()
	p := newPeer(a, log.retire, nil, nil)
	defer func() {
		p.close()
		<-p.closed
	}()
	r := bufio.NewReader(b)
	write := func(s string) {
		t.Helper()
		b.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if _, err := b.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	read := func() string {
		t.Helper()
		b.SetReadDeadline(time.Now().Add(5 * time.Second))
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		return line
	}
	write("not json\n")
	write(`{"op":"rollback"}` + "\n")
	write(`{"op":"retire","slot":3}` + "\n")
	if got := read(); got != `{"op":"retired","slot":3}`+"\n" {
		t.Fatalf("reply %q", got)
	}
	write(`{"op":"retire"}` + "\n")
	if got := read(); got != `{"op":"retired"}`+"\n" {
		t.Fatalf("reply %q", got)
	}
	if fmt.Sprint(log.get()) != "[3 0]" {
		t.Fatalf("retired %v", log.get())
	}
	// And what this side sends.
	go p.send(message{Op: "hello", Pid: 42})
	var m message
	if err := json.Unmarshal([]byte(read()), &m); err != nil || m != (message{Op: "hello", Pid: 42}) {
		t.Fatalf("hello: %+v %v", m, err)
	}
}

// A "retired" answer counts only for the slot it names: an answer for
// another slot (a late one, or a confused peer) does not end the wait for
// this one.
func TestPeerRetireChecksSlot(t *testing.T) {
	a, b := net.Pipe()
	p := newPeer(a, (&slotLog{}).retire, nil, nil)
	defer func() {
		p.close()
		<-p.closed
	}()
	r := bufio.NewReader(b)
	answer := make(chan string, 4)
	go func() {
		for line := range answer {
			b.SetWriteDeadline(time.Now().Add(5 * time.Second))
			b.Write([]byte(line + "\n"))
		}
	}()
	defer close(answer)
	done := make(chan error, 1)
	go func() { done <- p.retire(testCtx(t), 2) }()
	b.SetReadDeadline(time.Now().Add(5 * time.Second))
	if line, err := r.ReadString('\n'); err != nil || line != `{"op":"retire","slot":2}`+"\n" {
		t.Fatalf("asked %q %v", line, err)
	}
	answer <- `{"op":"retired","slot":1}`
	answer <- `{"op":"retired"}` // slot 0
	select {
	case err := <-done:
		t.Fatalf("retire of slot 2 returned (%v) on answers for other slots", err)
	case <-time.After(quiet):
	}
	answer <- `{"op":"retired","slot":2}`
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("retire: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("retire did not return on the answer for its slot")
	}
}

// A new primary learns the hand-over's state from its environment when
// the old primary died before it could send it; without one (an old
// primary of an earlier version) it falls back to --workers.
func TestHandoverStateFromEnvironment(t *testing.T) {
	if m := handoverState(encodeState(42, 7, 5), 2); m.Pid != 42 || m.Generation != 7 || m.Size != 5 {
		t.Errorf("handoverState(encodeState(42, 7, 5)) = %+v", m)
	}
	for _, v := range []string{"", "{", `{"op":"hello","pid":3}`, `{"op":"state","generation":0}`} {
		if m := handoverState(v, 2); m.Generation != 1 || m.Size != 2 || m.Pid != 0 {
			t.Errorf("handoverState(%q) = %+v, want generation 1, size 2, no pid", v, m)
		}
	}
}
