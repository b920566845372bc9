//go:build linux

package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// devServer is a tiny Go web server with only std imports: socket
// activation on fd 3, READY=1 over NOTIFY_SOCKET, a graceful drain on
// SIGTERM, and the testserver's answer format. VERSION is replaced.
const devServer = `package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const version = "VERSION"

func main() {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM)
	ln, err := net.FileListener(os.NewFile(3, "listener"))
	if err != nil {
		panic(err)
	}
	reply := fmt.Sprintf("%s pid=%d worker=%s gen=%s\n", version, os.Getpid(), os.Getenv("HANDOFF_WORKER"), os.Getenv("HANDOFF_GENERATION"))
	var draining atomic.Bool
	var mu sync.Mutex
	open := map[net.Conn]bool{}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if draining.Load() {
				w.Header().Set("Connection", "close")
			}
			fmt.Fprint(w, reply)
		}),
		ConnState: func(c net.Conn, st http.ConnState) {
			mu.Lock()
			defer mu.Unlock()
			if st == http.StateClosed || st == http.StateHijacked {
				delete(open, c)
			} else {
				open[c] = true
			}
		},
	}
	served := make(chan struct{})
	go func() {
		srv.Serve(ln)
		close(served)
	}()
	if c, err := net.Dial("unixgram", os.Getenv("NOTIFY_SOCKET")); err == nil {
		c.Write([]byte("READY=1"))
		c.Close()
	}
	<-sigs
	// Answer with Connection: close, stop accepting, then wait (bounded)
	// for the clients to close.
	draining.Store(true)
	ln.Close()
	<-served
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		n := len(open)
		mu.Unlock()
		if n == 0 {
			break
		}
	}
	srv.Close()
}
`

// writeDevSource saves main.go as editors that save safely do: a
// temporary file renamed over it, so a build never reads half a file.
func writeDevSource(t *testing.T, dir, src string) {
	t.Helper()
	tmp := filepath.Join(dir, ".main.go.swp")
	if err := os.WriteFile(tmp, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "main.go")); err != nil {
		t.Fatal(err)
	}
}

func devSource(v string) string { return strings.Replace(devServer, "VERSION", v, 1) }

// startDev runs 'handoff dev' on a fresh module with a real go build.
func startDev(t *testing.T, workers int, flags ...string) *Primary {
	t.Helper()
	return startDevWith(t, workers, devSource("one"), false, flags...)
}

// startDevWith is startDev with main.go holding src; noWait returns
// without waiting for the primary to be ready.
func startDevWith(t *testing.T, workers int, src string, noWait bool, flags ...string) *Primary {
	t.Helper()
	return startDevBuild(t, workers, src, "go build -o bin/server .", noWait, flags...)
}

// startDevBuild is startDevWith with a build command of its own.
func startDevBuild(t *testing.T, workers int, src, build string, noWait bool, flags ...string) *Primary {
	t.Helper()
	gocache, err := exec.Command("go", "env", "GOCACHE").Output()
	if err != nil {
		t.Fatal(err)
	}
	return StartPrimary(t, Options{
		Subcommand: "dev",
		Workers:    workers,
		Command:    "./bin/server",
		Flags:      append([]string{"--build", build}, flags...),
		Env:        []string{"GOFLAGS=-mod=mod", "GOCACHE=" + strings.TrimSpace(string(gocache)), "GOTOOLCHAIN=local"},
		NoWait:     noWait,
		Prepare: func(dir string) {
			writeBytes(t, filepath.Join(dir, "go.mod"), []byte("module example.com/devserver\n\ngo 1.26\n"), 0o644)
			writeDevSource(t, dir, src)
		},
	})
}

// awaitBuild waits for the next "build finished" or "build failed" after
// index from.
func (p *Primary) awaitBuild(from int, d time.Duration) Event {
	p.t.Helper()
	e, ok := p.Log.Wait(from, d, isMsg("build finished", "build failed"))
	if !ok {
		p.t.Fatalf("no build within %s\n%s", d, p.Tail(40))
	}
	return e
}

// awaitRollout waits for a good build after index from, its rollout, and
// version served by every worker.
func (p *Primary) awaitRollout(from int, version string) {
	p.t.Helper()
	if b := p.awaitBuild(from, 2*time.Minute); b.Msg != "build finished" {
		p.t.Fatalf("build of %s: %s", version, b.Raw)
	}
	if u := p.AwaitUpgrade(from, time.Minute); u.Aborted() {
		p.t.Fatalf("rollout of %s: %s", version, u.End.Raw)
	}
	p.WaitServing(p.URL(), version, 20*time.Second)
}

// TestDevEditBuildServe: 'handoff dev' with a real go build builds at
// start (no executable yet), serves it, rolls out an edit, keeps the old
// version through a syntax error, then serves the fix; a burst of saves is
// one build; no request fails throughout; TERM stops everything.
func TestDevEditBuildServe(t *testing.T) {
	t.Parallel()
	p := startDev(t, 2)
	first := p.awaitBuild(0, time.Second)
	if first.Msg != "build finished" {
		t.Fatalf("first build: %s", first.Raw)
	}
	if ready, _ := p.Log.Wait(0, 0, isMsg("primary ready")); ready.Seq < first.Seq {
		t.Errorf("primary ready before the first build")
	}
	p.WaitServing(p.URL(), "one", 20*time.Second)
	load := startLoad(t, p.URL())

	t.Log("an edit")
	mark := p.Log.Len()
	writeDevSource(t, p.Dir, devSource("two"))
	p.awaitRollout(mark, "two")

	t.Log("a syntax error")
	mark = p.Log.Len()
	writeDevSource(t, p.Dir, strings.Replace(devSource("three"), "func main() {", "func main() {\n\tthis is not Go", 1))
	b := p.awaitBuild(mark, 2*time.Minute)
	if b.Msg != "build failed" || !strings.Contains(b.Str("output"), "main.go:") {
		t.Fatalf("the broken build: %s", b.Raw)
	}
	p.WaitServing(p.URL(), "two", 20*time.Second)
	if e, ok := p.Log.Wait(mark, 0, isMsg("upgrade started")); ok {
		t.Errorf("a failed build rolled out: %s", e.Raw)
	}

	t.Log("the fix, saved in a burst")
	mark = p.Log.Len()
	// Ten saves as fast as they go: prepared first, then renamed in a
	// tight loop, well within the 100ms debounce.
	for i := 0; i < 10; i++ {
		writeBytes(t, filepath.Join(p.Dir, fmt.Sprintf(".save%d", i)), []byte(devSource("three")), 0o644)
	}
	for i := 0; i < 10; i++ {
		if err := os.Rename(filepath.Join(p.Dir, fmt.Sprintf(".save%d", i)), filepath.Join(p.Dir, "main.go")); err != nil {
			t.Fatal(err)
		}
	}
	p.awaitRollout(mark, "three")
	if n := len(filterFrom(p.Log.Events(), mark, "build finished", "build failed")); n != 1 {
		t.Errorf("%d builds for one burst of saves, want 1", n)
	}
	if n := len(filterFrom(p.Log.Events(), mark, "upgrade started")); n != 1 {
		t.Errorf("%d rollouts for one burst of saves, want 1", n)
	}
	checkLoad(t, load, "three")
	checkInvariant(t, p.Log.Events(), p.Workers)

	p.Signal(p.PID, syscall.SIGTERM)
	st := p.WaitExit(30 * time.Second)
	if st == nil || st.ExitCode() != 0 {
		t.Fatalf("after TERM: %v\n%s", st, p.Tail(20))
	}
	if live := p.LiveWorkers(); len(live) != 0 {
		t.Errorf("workers left after exit: %v", keysOfEvents(live))
	}
}

func filterFrom(events []Event, from int, msgs ...string) []Event {
	var out []Event
	for _, e := range events[from:] {
		if isMsg(msgs...)(e) {
			out = append(out, e)
		}
	}
	return out
}

func keysOfEvents(m map[int]Event) []int {
	var out []int
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestDevFirstBuildFails: with no executable yet and a first build that
// fails, 'handoff dev' serves nothing, shows the compiler's output and
// waits; the fix starts serving.
func TestDevFirstBuildFails(t *testing.T) {
	t.Parallel()
	p := startDevWith(t, 1, strings.Replace(devSource("one"), "func main() {", "func main() {\n\tbroken(", 1), true)
	b := p.awaitBuild(0, 2*time.Minute)
	if b.Msg != "build failed" || !strings.Contains(b.Str("output"), "main.go:") {
		t.Fatalf("first build: %s", b.Raw)
	}
	if e, ok := p.Log.Wait(0, 0, isMsg("listening", "primary ready", "worker spawned")); ok {
		t.Fatalf("serving after a failed first build: %s", e.Raw)
	}
	if p.Exited() {
		t.Fatalf("handoff dev exited after a failed first build\n%s", p.Tail(20))
	}
	mark := p.Log.Len()
	writeDevSource(t, p.Dir, devSource("fixed"))
	if b := p.awaitBuild(mark, 2*time.Minute); b.Msg != "build finished" {
		t.Fatalf("build of the fix: %s", b.Raw)
	}
	p.WaitReady(time.Minute)
	p.WaitServing(p.URL(), "fixed", 20*time.Second)
	p.Signal(p.PID, syscall.SIGTERM)
	if st := p.WaitExit(30 * time.Second); st == nil || st.ExitCode() != 0 {
		t.Fatalf("after TERM: %v", st)
	}
}

// TestDevSignalsBeforeFirstBuild: signals that come before anything
// serves are not lost. A TTIN during the first build adds a worker once
// the primary runs; a HUP after a failed first build builds again (the
// way to retry a build that failed for a reason outside the watched
// files).
func TestDevSignalsBeforeFirstBuild(t *testing.T) {
	t.Parallel()
	t.Run("TTIN", func(t *testing.T) {
		t.Parallel()
		// A first build slow enough for the signal to come during it.
		p := startDevBuild(t, 1, devSource("one"), "sleep 1 && go build -o bin/server .", true)
		st := p.awaitEvent(0, time.Minute, "build started")
		p.Signal(p.PID, syscall.SIGTTIN)
		if e, ok := p.Log.Wait(st.Seq, 0, isMsg("listening")); ok {
			t.Fatalf("serving before the TTIN: %s", e.Raw)
		}
		if b := p.awaitBuild(0, 2*time.Minute); b.Msg != "build finished" {
			t.Fatalf("first build: %s", b.Raw)
		}
		p.WaitReady(time.Minute)
		fin, ok := p.Log.Wait(0, 30*time.Second, isMsg("scale finished", "scale aborted", "scale refused"))
		if !ok || fin.Msg != "scale finished" || fin.Int0("to") != 2 {
			t.Fatalf("after a TTIN during the first build: %v\n%s", fin.Raw, p.Tail(30))
		}
		p.Workers = 2
		p.WaitServing(p.URL(), "one", 20*time.Second)
	})
	t.Run("HUP", func(t *testing.T) {
		t.Parallel()
		// The build needs a file that is not watched.
		p := startDevBuild(t, 1, devSource("one"), "test -e ok && go build -o bin/server .", true, "--exclude", "ok")
		if b := p.awaitBuild(0, 2*time.Minute); b.Msg != "build failed" {
			t.Fatalf("first build: %s", b.Raw)
		}
		mark := p.Log.Len()
		writeBytes(t, filepath.Join(p.Dir, "ok"), nil, 0o644)
		p.Signal(p.PID, syscall.SIGHUP)
		if b := p.awaitBuild(mark, 2*time.Minute); b.Msg != "build finished" {
			t.Fatalf("the build after HUP: %s", b.Raw)
		}
		p.WaitReady(time.Minute)
		p.WaitServing(p.URL(), "one", 20*time.Second)
	})
}

// awaitEvent waits for the next event msg after index from.
func (p *Primary) awaitEvent(from int, d time.Duration, msg string) Event {
	p.t.Helper()
	e, ok := p.Log.Wait(from, d, isMsg(msg))
	if !ok {
		p.t.Fatalf("no %q within %s\n%s", msg, d, p.Tail(40))
	}
	return e
}
