//go:build linux

package runtime

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/handoff-dev/handoff/workerpool"
)

func TestProtectRecoversAndLogs(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	err := protect(zap.New(core), "OnMessage", func() { panic("boom") }, zap.Int("slot", 1))
	if err == nil || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("protect: %v, want the panic as an error", err)
	}
	got := logs.FilterMessage("callback panicked").All()
	if len(got) != 1 {
		t.Fatalf("logged %v, want one \"callback panicked\"", logs.All())
	}
	f := got[0].ContextMap()
	if f["callback"] != "OnMessage" || f["panic"] != "boom" || f["slot"] != int64(1) {
		t.Errorf("fields %v", f)
	}
	if s, _ := f["stack"].(string); !strings.Contains(s, "TestProtectRecoversAndLogs") {
		t.Errorf("stack does not show where it panicked:\n%s", s)
	}
	if err := protect(nil, "Primary", func() {}); err != nil {
		t.Errorf("protect of a callback that returns: %v", err)
	}
}

// A panic in App.OnMessage drops that message; the next is delivered.
func TestHubDeliverSurvivesPanic(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	var got []string
	h := NewHub(func(m Message) {
		if string(m.Data) == `"panic"` {
			panic("bad message")
		}
		got = append(got, string(m.Data))
	})
	h.log = zap.New(core)
	h.deliver(workerpool.Message{Slot: 0, Pid: 1, Data: []byte(`"panic"`)})
	h.deliver(workerpool.Message{Slot: 0, Pid: 1, Data: []byte(`"next"`)})
	if !slices.Equal(got, []string{`"next"`}) {
		t.Errorf("delivered %v, want the message after the panic", got)
	}
	if n := logs.FilterMessage("callback panicked").Len(); n != 1 {
		t.Errorf("%d \"callback panicked\" events, want 1", n)
	}
}

// files is tableflip's Fds as far as startApp uses it: what one primary
// adds, the next inherits.
type files struct {
	inherited map[string]*os.File
	added     map[string]*os.File
}

func (f *files) File(name string) (*os.File, error) {
	file := f.inherited[name]
	delete(f.inherited, name)
	return file, nil
}

func (f *files) AddFile(name string, file *os.File) error {
	dup, err := dupConn(file)
	if err != nil {
		return err
	}
	f.added[name] = os.NewFile(uintptr(dup), name)
	return nil
}

// The App.Primary of a new primary starts only once the old primary's has
// returned, which it does at the hand-over.
func TestAppPrimaryNeverOverlaps(t *testing.T) {
	var mu sync.Mutex
	var events []string
	record := func(s string) {
		mu.Lock()
		events = append(events, s)
		mu.Unlock()
	}
	seen := func(s string) bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.Contains(events, s)
	}
	app := func(name string) func(context.Context, *Hub) {
		return func(ctx context.Context, _ *Hub) {
			record(name + " started")
			<-ctx.Done()
			record(name + " ended")
		}
	}
	waitFor := func(s string) {
		t.Helper()
		for end := time.Now().Add(5 * time.Second); !seen(s); time.Sleep(time.Millisecond) {
			if time.Now().After(end) {
				t.Fatalf("no %q within 5s: %v", s, events)
			}
		}
	}
	nop := zap.NewNop()
	oldFiles := &files{inherited: map[string]*os.File{}, added: map[string]*os.File{}}
	old := NewHub(nil)
	old.app, old.appCtx = app("old"), context.Background()
	old.attach(nil, nop, oldFiles)
	waitFor("old started")

	newFiles := &files{inherited: oldFiles.added, added: map[string]*os.File{}}
	next := NewHub(nil)
	next.app, next.appCtx = app("new"), context.Background()
	next.attach(nil, nop, newFiles)
	time.Sleep(50 * time.Millisecond)
	if seen("new started") {
		t.Fatalf("the new primary's App.Primary started while the old one's runs: %v", events)
	}
	old.handedOver()
	waitFor("new started")
	old.stopApp()
	next.stopApp()
	if want := []string{"old started", "old ended", "new started", "new ended"}; !slices.Equal(events, want) {
		t.Errorf("events %v, want %v", events, want)
	}
	if newFiles.added[appPrimaryKey] == nil {
		t.Errorf("the new primary passed no App.Primary pipe on")
	}

	// A panic ends App.Primary as a return does: the next one starts.
	core, logs := observer.New(zapcore.InfoLevel)
	third := NewHub(nil)
	third.app, third.appCtx = func(context.Context, *Hub) { panic(fmt.Sprint("oops")) }, context.Background()
	third.attach(nil, zap.New(core), &files{inherited: map[string]*os.File{}, added: map[string]*os.File{}})
	third.stopApp()
	if logs.FilterMessage("callback panicked").Len() != 1 {
		t.Errorf("a panic in App.Primary was not logged: %v", logs.All())
	}
}
