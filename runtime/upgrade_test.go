//go:build linux

package runtime

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/handoff-dev/handoff/workerpool"
)

func TestUpgradeBound(t *testing.T) {
	for _, c := range []struct {
		size         int
		ready, drain time.Duration
		want         time.Duration
	}{
		{1, 30 * time.Second, 10 * time.Second, 2*30*time.Second + 2*10*time.Second + time.Minute},
		{8, 5 * time.Second, time.Second, 9*5*time.Second + 2*time.Second + time.Minute},
		{0, time.Second, time.Second, time.Second + 2*time.Second + time.Minute},
	} {
		if got := upgradeBound(c.size, c.ready, c.drain); got != c.want {
			t.Errorf("upgradeBound(%d, %s, %s) = %s, want %s", c.size, c.ready, c.drain, got, c.want)
		}
	}
}

type noLauncher struct{}

func (noLauncher) Launch(int, *workerpool.Spec, []int) (workerpool.Process, error) {
	return nil, errors.New("no launch in this test")
}

// The bound of a self-upgrade is the pool's as the upgrade starts: after
// a scale, the scaled size's, not --workers'.
func TestUpgradeBoundFollowsThePool(t *testing.T) {
	cfg := Config{Workers: 1, ReadyTimeout: 7 * time.Second, DrainTimeout: 3 * time.Second}
	p := &primary{cfg: cfg, pool: workerpool.New(workerpool.Config{Size: cfg.Workers, Launcher: noLauncher{}})}
	if got, want := p.upgradeBound(), upgradeBound(1, cfg.ReadyTimeout, cfg.DrainTimeout); got != want {
		t.Fatalf("bound for 1 worker: %s, want %s", got, want)
	}
	// Before a start, Scale only sets the size.
	if err := p.pool.Scale(context.Background(), 6, nil); err != nil {
		t.Fatal(err)
	}
	if got, want := p.upgradeBound(), upgradeBound(6, cfg.ReadyTimeout, cfg.DrainTimeout); got != want {
		t.Fatalf("bound after scaling to 6: %s, want %s", got, want)
	}
}

// startChild starts a child of the test process with env added, to
// stand for a new primary that has not connected yet.
func startChild(t *testing.T, env ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "30")
	cmd.Env = append(os.Environ(), env...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

// A new primary that has not connected is found by the hand-over socket
// in its environment, among this process's children only.
func TestFindNewPrimary(t *testing.T) {
	const addr = "/tmp/handoff-test/handover.sock"
	other := startChild(t, envHandover+"=/tmp/handoff-other/handover.sock")
	child := startChild(t, envHandover+"="+addr)
	proc := findNewPrimary(addr)
	if proc == nil {
		t.Fatal("findNewPrimary found nothing")
	}
	defer proc.release()
	if proc.pid != child.Process.Pid {
		t.Fatalf("findNewPrimary found %d, want %d (other: %d)", proc.pid, child.Process.Pid, other.Process.Pid)
	}
	if p := findNewPrimary("/tmp/handoff-none/handover.sock"); p != nil {
		t.Fatalf("findNewPrimary found %d for a socket no child names", p.pid)
	}
}

// Past the bound, a new primary that still lacks slots is told to stop
// (TERM) at once, and killed only if it has not exited grace later; one
// that has every slot (its Ready is on its way) is given time, and is not
// stopped once it is ready.
func TestKillLateNewPrimary(t *testing.T) {
	p := &primary{log: zap.NewNop()}
	const addr = "/tmp/handoff-late/handover.sock"
	// upgradedOnExit closes as cmd exits, as tableflip's Upgrade returns
	// once the new primary it started has exited.
	upgradedOnExit := func(cmd *exec.Cmd) (<-chan struct{}, <-chan *os.ProcessState) {
		upgraded, state := make(chan struct{}), make(chan *os.ProcessState, 1)
		go func() {
			cmd.Wait()
			state <- cmd.ProcessState
			close(upgraded)
		}()
		return upgraded, state
	}
	endedBy := func(state <-chan *os.ProcessState, want syscall.Signal) {
		t.Helper()
		select {
		case st := <-state:
			ws := st.Sys().(syscall.WaitStatus)
			if !ws.Signaled() || ws.Signal() != want {
				t.Fatalf("new primary ended %v, want by %v", st, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("new primary still running")
		}
	}

	// Not connected: found and stopped with TERM, which ends it.
	child := startChild(t, envHandover+"="+addr)
	upgraded, state := upgradedOnExit(child)
	if !p.killLateNewPrimary(nil, addr, time.Minute, time.Minute, upgraded, func() bool { return true }) {
		t.Fatal("the late new primary was not stopped")
	}
	endedBy(state, syscall.SIGTERM)

	// Connected, and deaf to TERM: killed through its pidfd, grace later.
	child = exec.Command("sh", "-c", `trap "" TERM; exec sleep 30`)
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { child.Process.Kill() })
	// Deaf once the shell has exec'd sleep, TERM ignored.
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", child.Process.Pid)); strings.TrimSpace(string(b)) == "sleep" {
			break
		}
		if time.Now().After(end) {
			t.Fatal("the child did not exec sleep")
		}
	}
	upgraded, state = upgradedOnExit(child)
	proc := openProcess(child.Process.Pid)
	defer proc.release()
	start := time.Now()
	const grace = 300 * time.Millisecond
	if !p.killLateNewPrimary(proc, addr, time.Minute, grace, upgraded, func() bool { return true }) {
		t.Fatal("the late connected new primary was not killed")
	}
	if took := time.Since(start); took < grace {
		t.Errorf("killed %s after TERM, want a grace of %s first", took, grace)
	}
	endedBy(state, syscall.SIGKILL)

	// Every slot handed over, and then ready: left alone.
	child = startChild(t, envHandover+"="+addr)
	ready := make(chan struct{})
	close(ready)
	if p.killLateNewPrimary(nil, addr, time.Minute, time.Minute, ready, func() bool { return false }) {
		t.Fatal("a new primary holding every slot and ready was stopped")
	}
	if err := child.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("the ready new primary is gone: %v", err)
	}
}

// countingStore counts the files a Store is given.
type countingStore struct{ added map[string]int }

func (s *countingStore) AddFile(key string, _ *os.File) error { s.added[key]++; return nil }
func (s *countingStore) File(string) (*os.File, error)        { return nil, nil }

// A pinned file is given to tableflip once per key: exporting the same
// generations again (every failed self-upgrade does) adds nothing; another
// file under the key replaces it.
func TestExportOnceGivesEachFileOnce(t *testing.T) {
	a, err := os.Open("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := os.Open("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	fds := &countingStore{added: map[string]int{}}
	s := &exportOnce{fds: fds, held: map[string]*os.File{}}
	for range 3 {
		s.AddFile(pinKeyCurrent, a)
		s.AddFile(pinKeyPrevious, b)
	}
	if fds.added[pinKeyCurrent] != 1 || fds.added[pinKeyPrevious] != 1 {
		t.Fatalf("given %v, want each file once", fds.added)
	}
	s.AddFile(pinKeyCurrent, b)
	if fds.added[pinKeyCurrent] != 2 {
		t.Fatalf("another file under %s: given %d times, want 2", pinKeyCurrent, fds.added[pinKeyCurrent])
	}
}
