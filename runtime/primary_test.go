//go:build linux

package runtime

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/workerpool"
)

// A start that fails after binding leaves nothing: no socket file, and
// (goleak, TestMain) no goroutine of the watcher or of tableflip. Run can
// run once per process (tableflip allows one upgrader): this is the only
// in-process Run.
func TestRunStartFailureLeavesNothing(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	dir := t.TempDir()
	sock := filepath.Join(dir, "a.sock")
	cfg := Config{
		Listeners: []Listener{{Name: "a", Network: "unix", Address: sock}, {Name: "b", Network: "tcp", Address: busy.Addr().String()}},
		Command:   []string{"/bin/true"},
		Control:   filepath.Join(dir, "c.sock"),
		Metrics:   "127.0.0.1:0",
		Watch:     true,
		Signals:   make(chan os.Signal, 1),
	}
	err = Run(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("Run: %v, want the busy address named", err)
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("the unix listener's socket file is left: %v", err)
	}
}

func TestDeployedState(t *testing.T) {
	if got := deployedState(3, 3, nil); got != "READY=1\nSTATUS=serving generation 3" {
		t.Errorf("a deploy that finished: %q", got)
	}
	got := deployedState(2, 3, errors.New("worker 0 exited\nat start"))
	if got != "READY=1\nSTATUS=serving generation 2; generation 3 aborted: worker 0 exited at start" {
		t.Errorf("a refused deploy: %q", got)
	}
	rb := &rolledBack{gen: 3, serving: 2, err: &workerpool.RolledBackError{Slots: 2, Cause: &workerpool.ProbationError{
		Slot: 1, Pid: 7, ReadyFor: 1500 * time.Millisecond, MinUptime: 5 * time.Second,
		Exit: workerpool.Exit{Status: "exit status 4", StderrTail: "boom\n"}}}}
	got = deployedState(2, 3, rb)
	if got != "READY=1\nSTATUS=serving generation 2; generation 3 rolled back: worker 1 (pid 7) exited 1.5s after it was ready (min uptime 5s): exit status 4; its stderr ends: boom" {
		t.Errorf("a rolled-back deploy: %q", got)
	}
}
