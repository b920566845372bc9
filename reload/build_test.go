package reload

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestBuilderCheck(t *testing.T) {
	dir := t.TempDir()
	for cmd, want := range map[string]string{
		"":                           "empty",
		"   ":                        "empty",
		"no-such-compiler-xyz build": "no-such-compiler-xyz is not found in PATH",
		"./missing.sh":               "./missing.sh",
		"go build (":                 "does not parse",
		"echo 'unterminated":         "does not parse",
	} {
		err := (&Builder{Command: cmd, Dir: dir}).Check()
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error saying %q", cmd, err, want)
		}
	}
	for _, cmd := range []string{"go build -o bin/server .", "CGO_ENABLED=0 go build .", "cd . && go vet ./...",
		"true", "if true; then true; fi", "sh -c 'exit 0'"} {
		if err := (&Builder{Command: cmd, Dir: dir}).Check(); err != nil {
			t.Errorf("%q: %v", cmd, err)
		}
	}
}

func TestBuilderRun(t *testing.T) {
	b := &Builder{Command: "echo compiling; echo 'main.go:3: oops' >&2; exit 3"}
	out, err := b.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "exit status 3") {
		t.Errorf("err %v", err)
	}
	if string(out) != "compiling\nmain.go:3: oops\n" {
		t.Errorf("output %q", out)
	}
	if out, err := (&Builder{Command: "echo ok"}).Run(context.Background()); err != nil || string(out) != "ok\n" {
		t.Errorf("ok build: %q %v", out, err)
	}
	_, err = (&Builder{Command: "x=1; no-such-compiler-xyz"}).Run(context.Background())
	if !errors.Is(err, ErrCannotStart) {
		t.Errorf("a command that is not found: %v, want ErrCannotStart", err)
	}
}

// A cancelled build stops with every process of its group, the ones that
// ignore SIGINT too.
func TestBuilderCancelStopsEverything(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	b := &Builder{Command: "sleep 30 & echo $! > " + pidFile + "; wait", StopDelay: 200 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := b.Run(ctx)
		done <- err
	}()
	pid := waitPIDFile(t, pidFile)
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("err %v, want context.Canceled", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if syscall.Kill(pid, 0) != nil || zombie(pid) {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("the build's background process %d is still running", pid)
		}
	}
}

// waitPIDFile waits up to 10s for a build to write a pid into path.
func waitPIDFile(t *testing.T, path string) int {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		s, _ := os.ReadFile(path)
		if pid, _ := strconv.Atoi(strings.TrimSpace(string(s))); pid > 0 {
			return pid
		}
		if time.Now().After(end) {
			t.Fatal("the build did not start within 10s")
		}
	}
}

func zombie(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return true
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(f) > 0 && f[0] == "Z"
}

// loopProbe records what a BuildLoop does, with builds that wait for
// release or cancellation.
type loopProbe struct {
	mu     sync.Mutex
	events []string
	starts chan struct{}
	done   chan Result
	fail   bool
}

func (p *loopProbe) add(s string) {
	p.mu.Lock()
	p.events = append(p.events, s)
	p.mu.Unlock()
}

func (p *loopProbe) log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.events, "; ")
}

func startLoop(t *testing.T, release <-chan struct{}) (*loopProbe, chan<- Change) {
	p := &loopProbe{starts: make(chan struct{}, 100), done: make(chan Result, 100)}
	l := &BuildLoop{
		Build: func(ctx context.Context) ([]byte, error) {
			p.starts <- struct{}{}
			select {
			case <-release:
				return []byte("built\n"), nil
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		},
		Started:   func(c Change) { p.add("start " + c.String()) },
		Cancelled: func(c Change) { p.add("cancel " + c.String()) },
		Done: func(r Result) {
			p.add("done " + r.Change.String())
			p.done <- r
		},
	}
	changes := make(chan Change)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		l.Run(ctx, changes)
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })
	return p, changes
}

func TestBuildLoopCancelsStaleBuilds(t *testing.T) {
	release := make(chan struct{})
	p, changes := startLoop(t, release)
	changes <- Change{Paths: []string{"a.go"}}
	<-p.starts
	changes <- Change{Paths: []string{"b.go"}}
	<-p.starts // the second build, after the first was cancelled
	changes <- Change{Paths: []string{"c.go"}}
	<-p.starts
	close(release)
	r := <-p.done
	if r.Err != nil || string(r.Output) != "built\n" || r.Change.String() != "a.go, b.go, c.go" {
		t.Errorf("result %+v", r)
	}
	want := "start a.go; cancel a.go; start a.go, b.go; cancel a.go, b.go; start a.go, b.go, c.go; done a.go, b.go, c.go"
	if got := p.log(); got != want {
		t.Errorf("events:\n %s\nwant\n %s", got, want)
	}
	// Later changes build again, one build each.
	changes <- Change{Paths: []string{"d.go"}}
	if r := <-p.done; r.Change.String() != "d.go" {
		t.Errorf("result %+v", r)
	}
}

// The end of the loop's context stops a running build — its process and
// what that started are gone — and Run returns, reporting no result for it.
func TestBuildLoopStops(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	b := &Builder{Command: "sleep 30 & echo $! > " + pidFile + "; wait", StopDelay: 200 * time.Millisecond}
	var (
		mu     sync.Mutex
		events []string
		built  = make(chan error, 1)
	)
	l := &BuildLoop{
		Build: func(ctx context.Context) ([]byte, error) {
			out, err := b.Run(ctx)
			built <- err
			return out, err
		},
		Started:   func(c Change) { mu.Lock(); events = append(events, "start "+c.String()); mu.Unlock() },
		Cancelled: func(c Change) { mu.Lock(); events = append(events, "cancel "+c.String()); mu.Unlock() },
		Done:      func(r Result) { mu.Lock(); events = append(events, "done "+r.Change.String()); mu.Unlock() },
	}
	changes := make(chan Change)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	returned := make(chan struct{})
	go func() {
		defer close(returned)
		l.Run(ctx, changes)
	}()
	select {
	case changes <- Change{Paths: []string{"a.go"}}:
	case <-time.After(10 * time.Second):
		t.Fatal("the loop took no change within 10s")
	}
	pid := waitPIDFile(t, pidFile)
	cancel()
	select {
	case <-returned:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within 10s of its context's end")
	}
	// Run returned only once the build had: its error is the cancellation.
	select {
	case err := <-built:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("the build returned %v, want context.Canceled", err)
		}
	default:
		t.Error("Run returned before its build did")
	}
	for end := time.Now().Add(10 * time.Second); syscall.Kill(pid, 0) == nil && !zombie(pid); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("the build's process %d still runs 10s after Run returned", pid)
		}
	}
	mu.Lock()
	got := strings.Join(events, "; ")
	mu.Unlock()
	if got != "start a.go" {
		t.Errorf("events %q, want only \"start a.go\" (no result for a build the loop's end stopped)", got)
	}
	// goleak (TestMain) checks that no goroutine is left.
}
