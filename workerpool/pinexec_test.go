//go:build linux

package workerpool

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/internal/pin"
	"github.com/handoff-dev/handoff/internal/testutil"
)

// racyPin is a pin whose file is rewritten in place by rewrite right
// after Exec has checked it, before the worker's exec: the window between
// the check and the exec, made as wide as a test needs.
type racyPin struct {
	*pin.File
	rewrite func()
}

func (r *racyPin) Exec(args []string) (*os.File, []string, string, error) {
	exe, argv, note, err := r.File.Exec(args)
	if err == nil && r.rewrite != nil {
		r.rewrite()
	}
	return exe, argv, note, err
}

// writeInPlace writes b into the file at path, in place (the same inode,
// as cp does), retrying while a process executes it (ETXTBSY).
func writeInPlace(t *testing.T, path string, b []byte) {
	t.Helper()
	for end := time.Now().Add(waitLimit); ; {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
		if errors.Is(err, syscall.ETXTBSY) && time.Now().Before(end) {
			time.Sleep(time.Millisecond)
			continue
		}
		if err != nil {
			t.Error(err)
			return
		}
		_, err = f.Write(b)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			t.Error(err)
		}
		return
	}
}

// pinTrue pins true at DIR/server, and returns true's and false's
// content.
func pinTrue(t *testing.T, e *procEnv) (path string, f *pin.File, yes, no []byte) {
	t.Helper()
	yes, no = testutil.Program(t, "true"), testutil.Program(t, "false")
	path = filepath.Join(e.dir, "server")
	testutil.Install(t, path, yes)
	f, err := pin.Pin(path, pin.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return path, f, yes, no
}

func pinnedSpec(e *procEnv, path string, p Pinned) *Spec {
	return &Spec{Path: path, Args: []string{"server"}, Env: []string{"PATH=" + os.Getenv("PATH")}, Generation: 1, Pin: p}
}

// A binary rewritten in place between the pin's check and the worker's
// exec never runs as the pinned generation: the worker is stopped right
// after its exec, before it runs, found to execute other content, and
// killed there, with the reason at the end of its stderr.
func TestPinnedExecRewrittenBeforeExec(t *testing.T) {
	e := newProcEnv(t)
	path, f, _, no := pinTrue(t, e)

	p := e.launch(t, 1, pinnedSpec(e, path, &racyPin{File: f, rewrite: func() { writeInPlace(t, path, no) }}))
	waitChan(t, p.Done(), "the worker's end")
	x := p.Exit()
	if x.Code == 1 {
		t.Fatalf("the worker ran the content written after the check (false): %+v", x)
	}
	if x.Status != "signal: killed" || !strings.Contains(x.StderrTail, "worker killed at its exec") ||
		!strings.Contains(x.StderrTail, "rewritten in place") {
		t.Errorf("exit %+v, want killed at its exec, saying why", x)
	}

	// The next start sees the rewrite and runs the pinned copy.
	p = e.launch(t, 1, pinnedSpec(e, path, f))
	waitChan(t, p.Done(), "the worker's end")
	if x := p.Exit(); x.Code != 0 {
		t.Errorf("restart: %+v, want the pinned true (its copy)", x)
	}
}

// Workers started while the pinned binary is rewritten in place in a loop
// (its own content and another's, alternately) each run exactly the
// pinned content, or are killed at their exec: never the other one.
func TestPinnedExecUnderRewrites(t *testing.T) {
	e := newProcEnv(t)
	path, f, yes, no := pinTrue(t, e)

	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; !stop.Load(); i++ {
			writeInPlace(t, path, [][]byte{no, yes}[i%2])
		}
	}()
	const starts = 40
	ran, killed, busy := 0, 0, 0
	for range starts {
		p, err := e.l.Launch(1, pinnedSpec(e, path, f), nil)
		if err != nil {
			t.Fatal(err)
		}
		waitChan(t, p.Done(), "the worker's end")
		switch x := p.Exit(); {
		case x.Code == 0:
			ran++
		case x.Status == "signal: killed" && strings.Contains(x.StderrTail, "worker killed at its exec"):
			killed++
		case x.Code == 126 && strings.Contains(x.StderrTail, "text file busy"):
			// Open for writing for the whole exec retry: nothing ran.
			busy++
		default:
			t.Errorf("a worker ran other content than the pinned one: %+v", x)
		}
	}
	stop.Store(true)
	wg.Wait()
	t.Logf("%d starts: %d ran the pinned content, %d were killed at their exec, %d found it busy being written", starts, ran, killed, busy)
}
