//go:build linux

package runtime

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/handoff-dev/handoff/internal/control"
	"github.com/handoff-dev/handoff/internal/pin"
	"github.com/handoff-dev/handoff/workerpool"
)

// rollbackHandler is the control handler of a primary whose requests go
// to a deploy loop with fake deploys (see startLoop).
func rollbackHandler(t *testing.T) (controlHandler, *loopRun, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.InfoLevel)
	r := startLoop(t, false)
	p := &primary{log: zap.New(core), reqs: r.reqs, closed: make(chan struct{}), pool: workerpool.New(workerpool.Config{})}
	h := controlHandler{p}
	t.Cleanup(func() {
		r.sigs <- syscall.SIGTERM
		<-r.stopped
		r.end(t)
		close(p.closed)
	})
	return h, r, logs
}

// Until a previous generation is kept, with its rollback job, a rollback
// is refused: one line saying so, and the "rollback refused" event.
func TestRollbackRefusedWithoutPrevious(t *testing.T) {
	h, _, logs := rollbackHandler(t)
	ran := false
	for _, setup := range []func(){
		func() {},
		// A previous generation without a job to deploy it.
		func() {
			h.p.gens.set(&GenerationStatus{Generation: 2, Path: "/b"}, &GenerationStatus{Generation: 1, Path: "/a"})
		},
		// A job without a previous generation.
		func() {
			h.p.gens.set(&GenerationStatus{Generation: 2, Path: "/b"}, nil)
			h.p.gens.setRollback(func(context.Context) error { ran = true; return nil })
		},
	} {
		setup()
		rep := h.Rollback(context.Background())
		if rep.OK || rep.Error != "refused: no previous generation to roll back to" {
			t.Errorf("rollback: %+v", rep)
		}
	}
	if ran {
		t.Error("the rollback job ran without a previous generation")
	}
	if n := logs.FilterMessage("rollback refused").FilterField(zap.String("reason", errNoPrevious.Error())).Len(); n != 3 {
		t.Errorf("%d \"rollback refused\" events, want 3", n)
	}
}

// A rollback is a job of the loop: it waits for the running deploy, and
// its outcome is the reply: done with the generation now serving, or
// aborted with the worker's failure.
func TestRollbackRunsInTurnAndReports(t *testing.T) {
	h, r, _ := rollbackHandler(t)
	h.p.gens.set(&GenerationStatus{Generation: 3, Path: "/b"}, &GenerationStatus{Generation: 2, Path: "/a"})
	outcome := make(chan error, 1)
	h.p.gens.setRollback(func(ctx context.Context) error {
		if r.deploys.runningNow() != 0 {
			t.Error("the rollback ran beside a deploy")
		}
		err := <-outcome
		if err == nil {
			h.p.book.setServing(4)
		}
		return err
	})

	r.sigs <- syscall.SIGHUP
	r.deploys.awaitBegun(t)
	replies := make(chan control.Reply, 1)
	go func() { replies <- h.Rollback(context.Background()) }()
	select {
	case rep := <-replies:
		t.Fatalf("rollback answered during a deploy: %+v", rep)
	case <-time.After(quiet):
	}
	r.deploys.release <- nil
	outcome <- nil
	rep := <-replies
	if !rep.OK || rep.Generation != 4 || rep.Message != "done: generation 4 serving" {
		t.Errorf("rollback: %+v", rep)
	}

	outcome <- &workerpool.StartError{Slot: 0, Pid: 12, Reason: "exited", Exit: workerpool.Exit{Status: "exit status 1", StderrTail: "x\nboom"}}
	rep = h.Rollback(context.Background())
	if rep.OK || rep.Error != "aborted: worker 0 (pid 12) exited at start: exit status 1; its stderr ends: x | boom" {
		t.Errorf("failed rollback: %+v", rep)
	}
}

// A rollback asked for of a primary that has handed over is answered
// "retry", so the client asks the new primary: the control server names
// it.
func TestRollbackAfterHandOverRetries(t *testing.T) {
	p := &primary{log: zap.NewNop(), reqs: make(chan request), closed: make(chan struct{})}
	path := filepath.Join(t.TempDir(), "c.sock")
	s, err := control.Listen(control.Config{Path: path, Fds: plainFds{}, Handler: controlHandler{p}, Log: p.log})
	if err != nil {
		t.Fatal(err)
	}
	s.Serve()
	t.Cleanup(func() { s.Close(true) })
	go func() {
		r := <-p.reqs
		s.HandedOver(42)
		r.done <- errHandedOver
	}()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	c.Write([]byte(`{"op":"rollback"}` + "\n"))
	var rep control.Reply
	if err := json.NewDecoder(c).Decode(&rep); err != nil {
		t.Fatal(err)
	}
	if !rep.Retry || !strings.Contains(rep.Error, "pid 42") {
		t.Errorf("rollback after a hand-over: %+v", rep)
	}
}

// plainFds is a control.Fds without tableflip: nothing inherited, nothing
// passed on.
type plainFds struct{}

func (plainFds) Listener(network, addr string) (net.Listener, error) { return nil, nil }
func (plainFds) ListenWithCallback(network, addr string, callback func(network, addr string) (net.Listener, error)) (net.Listener, error) {
	return callback(network, addr)
}
func (plainFds) File(name string) (*os.File, error)    { return nil, nil }
func (plainFds) AddFile(name string, f *os.File) error { return nil }

// Status shows the generation records the loop publishes: before the
// first workers none; a generation without a pin by its path; pinned ones
// with their files' identities; and a rollback becomes possible with a
// previous generation.
func TestStatusGenerations(t *testing.T) {
	p := &primary{pool: workerpool.New(workerpool.Config{})}
	p.publishGenerations()
	st := p.status()
	if st.Generations.Current != nil || st.Generations.Previous != nil || p.gens.rollback != nil {
		t.Errorf("before the first workers: %+v", st.Generations)
	}
	p.cur = &generation{gen: 1, spec: &workerpool.Spec{Path: "/srv/app/releases/41/server", Generation: 1}}
	p.publishGenerations()
	b, _ := json.Marshal(p.status())
	if !strings.Contains(string(b), `"generations":{"current":{"generation":1,"path":"/srv/app/releases/41/server"},"previous":null}`) {
		t.Errorf("status: %s", b)
	}
	if p.gens.rollback != nil {
		t.Error("a rollback job without a previous generation")
	}

	dir := t.TempDir()
	pinned := func(name, content string) *pin.File {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
		mtime := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
		if err := os.Chtimes(path, mtime, mtime); err != nil {
			t.Fatal(err)
		}
		f, err := pin.Pin(path, pin.Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	a, c := pinned("a", "#!/bin/sh\n"), pinned("b", "#!/bin/sh\nexit 1\n")
	p.prev = &generation{gen: 1, spec: &workerpool.Spec{Path: a.Identity().Path, Pin: a}}
	p.cur = &generation{gen: 3, spec: &workerpool.Spec{Path: c.Identity().Path, Pin: c}, rollbackOf: 1}
	p.publishGenerations()
	b, _ = json.Marshal(p.status().Generations)
	// What a script pins: its interpreter.
	sh, ok := a.Interpreter()
	if !ok {
		t.Fatal("a script's interpreter is not pinned")
	}
	pins := func(f *pin.File) string {
		return `"pinned":"` + f.Describe() + `","script":true,"interpreter":{"path":"` + sh.Path + `","size":` +
			strconv.FormatInt(sh.Size, 10) + `,"sha256":"` + sh.SHA256 + `"}`
	}
	if d := a.Describe(); !strings.HasPrefix(d, "script: interpreter "+sh.Path+" pinned (sha256 ") ||
		!strings.Contains(d, "the script runs from its path") {
		t.Errorf("a script pins %q", d)
	}
	want := `{"current":{"generation":3,"path":"` + c.Identity().Path + `","size":17,"mtime":"2026-01-02T03:04:05Z","sha256":"` + c.Identity().SHA256 + `","rollback_of":1,` + pins(c) + `},` +
		`"previous":{"generation":1,"path":"` + a.Identity().Path + `","size":10,"mtime":"2026-01-02T03:04:05Z","sha256":"` + a.Identity().SHA256 + `",` + pins(a) + `}}`
	if string(b) != want {
		t.Errorf("generations:\n%s\nwant\n%s", b, want)
	}
	if p.gens.rollback == nil {
		t.Error("no rollback job with a previous generation")
	}
	if !sameBuild(p.prev, p.prev) || sameBuild(p.prev, p.cur) {
		t.Error("sameBuild")
	}
	// The same text at another path (a release directory's launcher) is
	// another file.
	twin := pinned("a2", "#!/bin/sh\n")
	if sameBuild(p.prev, &generation{gen: 4, spec: &workerpool.Spec{Path: twin.Identity().Path, Pin: twin}}) {
		t.Error("sameBuild of two paths with the same content")
	}
}

func TestMinUptimeDefaults(t *testing.T) {
	for given, want := range map[time.Duration]time.Duration{0: DefaultMinUptime, -1: -1, 2 * time.Second: 2 * time.Second} {
		cfg := Config{MinUptime: given}
		cfg.setDefaults()
		if cfg.MinUptime != want {
			t.Errorf("MinUptime %v: %v after defaults, want %v", given, cfg.MinUptime, want)
		}
	}
	if DefaultMinUptime != 5*time.Second {
		t.Errorf("DefaultMinUptime %v, want the documented 5s", DefaultMinUptime)
	}
}
