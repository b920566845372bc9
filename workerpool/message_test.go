//go:build linux

package workerpool

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"
)

// channelChild is the worker of the message tests: it says ready on its
// channel, sends {"hello":pid}, and answers each line with {"echo":line}
// until the channel ends.
func channelChild() int {
	fd, err := strconv.Atoi(os.Getenv("HANDOFF_CHANNEL_FD"))
	if err != nil || os.Getenv("NODE_CHANNEL_FD") != os.Getenv("HANDOFF_CHANNEL_FD") {
		return 30
	}
	f := os.NewFile(uintptr(fd), "channel")
	fmt.Fprintf(f, "{\"handoff\":\"ready\"}\n{\"hello\":%d}\n", os.Getpid())
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		b, _ := json.Marshal(map[string]string{"echo": sc.Text()})
		f.Write(append(b, '\n'))
	}
	return 0
}

type msgLog struct {
	mu  sync.Mutex
	got []Message
	ch  chan struct{}
}

func (l *msgLog) add(m Message) {
	l.mu.Lock()
	l.got = append(l.got, m)
	l.mu.Unlock()
	select {
	case l.ch <- struct{}{}:
	default:
	}
}

func (l *msgLog) wait(t *testing.T, n int) []Message {
	t.Helper()
	end := time.After(waitLimit)
	for {
		l.mu.Lock()
		if len(l.got) >= n {
			out := append([]Message(nil), l.got...)
			l.mu.Unlock()
			return out
		}
		l.mu.Unlock()
		select {
		case <-l.ch:
		case <-end:
			t.Fatalf("got %d messages, want %d", len(l.got), n)
		}
	}
}

// A worker with a channel: ready over it (no READY=1 datagram), its
// messages reach OnMessage with its slot, pid and generation, and
// Pool.Send, Broadcast and Reply reach it, in order.
func TestChannelMessages(t *testing.T) {
	e := newProcEnv(t)
	msgs := &msgLog{ch: make(chan struct{}, 1)}
	e.l.Channel, e.l.OnMessage = true, msgs.add
	pool := New(Config{Size: 2, Launcher: e.l, ReadyTimeout: waitLimit, DrainTimeout: waitLimit})
	defer pool.Shutdown()
	if err := pool.Start(t.Context(), e.spec(3, "WP_CHANNEL=1")); err != nil {
		t.Fatal(err)
	}
	got := msgs.wait(t, 2)
	pids := map[int]int{}
	for _, w := range pool.Workers() {
		pids[w.Pid] = w.Slot
	}
	for _, m := range got {
		if slot, ok := pids[m.Pid]; !ok || slot != m.Slot || m.Generation != 3 || string(m.Data) != fmt.Sprintf(`{"hello":%d}`, m.Pid) {
			t.Fatalf("message %+v (data %s) from an unknown worker or wrong: workers %v", m, m.Data, pids)
		}
	}
	for i := 0; i < 50; i++ {
		if err := pool.Send(1, []byte(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := pool.Broadcast([]byte(`"all"`)); n != 2 || err != nil {
		t.Fatalf("Broadcast reached %d (%v), want 2", n, err)
	}
	if err := got[0].Reply([]byte(`"reply"`)); err != nil {
		t.Fatal(err)
	}
	all := msgs.wait(t, 2+50+2+1)
	var fromSlot1 []string
	counts := map[string]int{}
	for _, m := range all[2:] {
		counts[string(m.Data)]++
		if m.Slot == 1 && string(m.Data) != `{"echo":"\"all\""}` && string(m.Data) != `{"echo":"\"reply\""}` {
			fromSlot1 = append(fromSlot1, string(m.Data))
		}
	}
	for i, d := range fromSlot1 {
		if want := fmt.Sprintf(`{"echo":"%d"}`, i); d != want {
			t.Fatalf("echo %d from slot 1 = %s, want %s (order lost)", i, d, want)
		}
	}
	if counts[`{"echo":"\"all\""}`] != 2 || counts[`{"echo":"\"reply\""}`] != 1 {
		t.Fatalf("broadcast/reply echoes: %v", counts)
	}
	if err := pool.Send(5, []byte("1")); err == nil {
		t.Fatal("Send to slot 5 of 2 succeeded")
	}
}
