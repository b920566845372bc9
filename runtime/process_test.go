//go:build linux

package runtime

import (
	"errors"
	"os/exec"
	"syscall"
	"testing"

	"github.com/handoff-dev/handoff/internal/testutil"
)

// Without pidfds (before Linux 5.3, or refused), another primary is
// signalled by pid, but only the very process that was opened: one that
// has a different start time under that pid gets nothing.
func TestProcessWithoutPidfd(t *testing.T) {
	defer func(f func(int, int) (int, error)) { pidfdOpen = f }(pidfdOpen)
	pidfdOpen = func(int, int) (int, error) { return -1, syscall.ENOSYS }

	cmd, p := openSleep(t)
	if p.fd != -1 || p.start == 0 {
		t.Fatalf("openProcess without pidfds = %+v, want fd -1 and a start time", p)
	}
	other := &process{pid: p.pid, fd: -1, start: p.start + 1}
	if err := other.signal(syscall.SIGTERM); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("signal to the pid of a process with another start time: %v, want ESRCH", err)
	}
	if err := p.signal(0); err != nil {
		t.Fatalf("signal 0 to the live process: %v", err)
	}
	if err := p.signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	err := cmd.Wait()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Fatalf("sleep ended with %v, want SIGTERM", err)
	}
	// Reaped: its pid is free for another process, which is never signalled.
	if err := p.signal(syscall.SIGTERM); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("signal after the process was reaped: %v, want ESRCH", err)
	}
	var nilProc *process
	if err := nilProc.signal(syscall.SIGTERM); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("nil process: %v", err)
	}
}

func TestProcessWithPidfd(t *testing.T) {
	cmd, p := openSleep(t)
	if p.fd < 0 {
		testutil.Need(t, "no pidfd on this kernel")
	}
	if err := p.signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	if err := p.signal(syscall.SIGTERM); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("pidfd signal after the reap: %v, want ESRCH", err)
	}
}

// openSleep starts a process that waits, and opens it.
func openSleep(t *testing.T) (*exec.Cmd, *process) {
	t.Helper()
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := openProcess(cmd.Process.Pid)
	t.Cleanup(func() {
		cmd.Process.Kill()
		p.release()
	})
	return cmd, p
}
