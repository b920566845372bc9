//go:build linux

package runtime

import (
	"context"
	"errors"
	"os"
	"os/exec"
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

func (noLauncher) Launch(int, *workerpool.Spec) (workerpool.Process, error) {
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

// waitKilled waits for cmd to end and fails the test unless SIGKILL ended
// it.
func waitKilled(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatalf("process %d still running", cmd.Process.Pid)
	}
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("process %d ended with %v, want SIGKILL", cmd.Process.Pid, cmd.ProcessState)
	}
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

// Past the bound, a new primary that still lacks slots is killed at once;
// one that has every slot (its Ready is on its way) is given time, and is
// not killed once it is ready.
func TestKillLateNewPrimary(t *testing.T) {
	p := &primary{log: zap.NewNop()}
	const addr = "/tmp/handoff-late/handover.sock"

	// Not connected: found and killed.
	child := startChild(t, envHandover+"="+addr)
	if !p.killLateNewPrimary(nil, addr, time.Minute, make(chan struct{}), func() bool { return true }) {
		t.Fatal("the late new primary was not killed")
	}
	waitKilled(t, child)

	// Connected: killed through its pidfd.
	child = startChild(t)
	proc := openProcess(child.Process.Pid)
	defer proc.release()
	if !p.killLateNewPrimary(proc, addr, time.Minute, make(chan struct{}), func() bool { return true }) {
		t.Fatal("the late connected new primary was not killed")
	}
	waitKilled(t, child)

	// Every slot handed over, and then ready: left alone.
	child = startChild(t, envHandover+"="+addr)
	upgraded := make(chan struct{})
	close(upgraded)
	if p.killLateNewPrimary(nil, addr, time.Minute, upgraded, func() bool { return false }) {
		t.Fatal("a new primary holding every slot and ready was killed")
	}
	if err := child.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("the ready new primary is gone: %v", err)
	}
}
