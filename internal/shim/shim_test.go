//go:build linux

package shim

import (
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoff-dev/handoff/internal/testutil"
)

// The test binary is also the shim: started with EnvMarker set, it execs.
// With testutil.EnvOldKernel set, it first execs itself again as on the
// oldest kernel handoff supports.
func TestMain(m *testing.M) {
	testutil.OldKernelMain()
	Main()
	os.Exit(m.Run())
}

// shim runs this test binary as the shim for path, with argv (the
// command's, from its argv[0]) and env added.
func shim(t *testing.T, path string, env []string, argv ...string) (*exec.Cmd, *strings.Builder) {
	t.Helper()
	cmd := exec.Command(os.Args[0], argv...)
	cmd.Env = append(append(os.Environ(), EnvMarker+"="+path), env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	return cmd, &stderr
}

func script(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "worker")
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestExecSetsListenPIDAndKeepsArgv(t *testing.T) {
	path := script(t, `echo "$0|$1|$LISTEN_PID|$$|${HANDOFF_SHIM_EXEC-unset}"`)
	cmd, _ := shim(t, path, []string{"LISTEN_FDS=0", "LISTEN_PID=1"}, "worker", "first")
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Split(strings.TrimSpace(string(out)), "|")
	if len(f) != 5 || f[0] != path || f[1] != "first" || f[4] != "unset" {
		t.Fatalf("worker saw %q", out)
	}
	// No listeners: LISTEN_PID is not set (a stale one is dropped).
	if f[2] != "" {
		t.Fatalf("LISTEN_PID = %q with LISTEN_FDS=0", f[2])
	}

	cmd, _ = shim(t, path, []string{"LISTEN_FDS=1", "LISTEN_PID=1"}, "worker", "first")
	if os.Getenv("LISTEN_FDS") != "" {
		testutil.Need(t, "LISTEN_FDS set in the test's own environment")
	}
	devnull, _ := os.Open(os.DevNull)
	defer devnull.Close()
	cmd.ExtraFiles = []*os.File{devnull}
	out, err = cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	f = strings.Split(strings.TrimSpace(string(out)), "|")
	if len(f) != 5 || f[2] != f[3] || f[2] == "" {
		t.Fatalf("LISTEN_PID %q, worker pid %q", f[2], f[3])
	}
}

// WATCHDOG_PID names the command's own pid when a watchdog is given (a
// stale one is dropped), and is absent otherwise.
func TestExecSetsWatchdogPID(t *testing.T) {
	path := script(t, `echo "$$|${WATCHDOG_PID-unset}|${WATCHDOG_USEC-unset}"`)
	for _, tc := range []struct {
		env  []string
		want func(pid string) string
	}{
		{[]string{"WATCHDOG_USEC=5000000", "WATCHDOG_PID=1"}, func(pid string) string { return pid + "|" + pid + "|5000000" }},
		{[]string{"WATCHDOG_PID=1"}, func(pid string) string { return pid + "|unset|unset" }},
	} {
		cmd, _ := shim(t, path, tc.env, "worker")
		out, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		got := strings.TrimSpace(string(out))
		pid, _, _ := strings.Cut(got, "|")
		if want := tc.want(pid); got != want {
			t.Errorf("env %q: worker saw %q, want %q", tc.env, got, want)
		}
	}
}

// A binary still open for writing (a deploy that just wrote it) fails to
// exec with ETXTBSY; the shim retries until the writer has closed it.
func TestExecRetriesTextBusy(t *testing.T) {
	path := script(t, "exit 7\n")
	w, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	cmd, stderr := shim(t, path, nil)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	const held = 200 * time.Millisecond
	time.Sleep(held) // the writer is busy this long; the shim must wait
	w.Close()
	err = cmd.Wait()
	if code := cmd.ProcessState.ExitCode(); code != 7 {
		t.Fatalf("exit code %d (%v), want the worker's 7; stderr %q", code, err, stderr)
	}
}

func TestExecFailures(t *testing.T) {
	dir := t.TempDir()
	notExec := filepath.Join(dir, "plain")
	os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644)
	for _, tc := range []struct {
		path string
		code int
	}{
		{filepath.Join(dir, "missing"), ExitNotFound},
		{notExec, ExitCannotExec},
	} {
		cmd, stderr := shim(t, tc.path, nil)
		cmd.Run()
		if code := cmd.ProcessState.ExitCode(); code != tc.code {
			t.Errorf("%s: exit code %d, want %d", tc.path, code, tc.code)
		}
		lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
		if len(lines) != 1 || !strings.HasPrefix(lines[0], "handoff: cannot exec worker command "+tc.path) {
			t.Errorf("%s: stderr %q, want one handoff: line", tc.path, stderr)
		}
	}
}

func TestHasKey(t *testing.T) {
	for kv, want := range map[string]bool{"LISTEN_PID=1": true, "LISTEN_PID=": true, "LISTEN_PIDS=1": false, "LISTEN_PID": false} {
		if got := hasKey(kv, "LISTEN_PID"); got != want {
			t.Errorf("hasKey(%q) = %v", kv, got)
		}
	}
}

// The message channel, right after the listeners, reaches the command; an
// fd past it does not, nor does a channel fd named anywhere else.
func TestChannelFDKept(t *testing.T) {
	testChannelFDKept(t, false)
}

// On a kernel without close_range's CLOSE_RANGE_CLOEXEC (before Linux
// 5.11; the three LTS distributions handoff supports ship 4.18, 5.4 and
// 5.10), the fds past the listeners are still kept from the command.
func TestChannelFDKeptOldKernel(t *testing.T) {
	if !testutil.OldKernelSupported() {
		testutil.Need(t, "no old-kernel filter on this architecture")
	}
	testChannelFDKept(t, true)
}

func testChannelFDKept(t *testing.T, oldKernel bool) {
	if os.Getenv("LISTEN_FDS") != "" {
		testutil.Need(t, "LISTEN_FDS set in the test's own environment")
	}
	path := script(t, `for fd in 3 4 5; do if [ -e /proc/$$/fd/$fd ]; then printf "$fd "; fi; done`)
	open := func() *os.File {
		f, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	for _, tc := range []struct {
		env  []string
		want string
	}{
		{[]string{"LISTEN_FDS=1", EnvChannelFD + "=4"}, "3 4"},
		{[]string{"LISTEN_FDS=1"}, "3"},
		{[]string{"LISTEN_FDS=1", EnvChannelFD + "=5"}, "3"},
	} {
		cmd, stderr := shim(t, path, tc.env)
		if oldKernel {
			// This binary again, as a wrapper that execs the shim.
			cmd.Args = append([]string{os.Args[0]}, cmd.Args...)
			cmd.Env = append(cmd.Env, testutil.EnvOldKernel+"=1")
		}
		cmd.ExtraFiles = []*os.File{open(), open(), open()}
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%v: %v %s", tc.env, err, stderr)
		}
		if got := strings.TrimSpace(string(out)); got != tc.want {
			t.Errorf("%v: the command has fds %q, want %q", tc.env, got, tc.want)
		}
	}
}

// Without close_range (ENOSYS before Linux 5.9, EINVAL for
// CLOSE_RANGE_CLOEXEC before 5.11), every fd from the first one on is
// marked close-on-exec through /proc/self/fd; those below are left alone.
func TestCloseOnExecFallBack(t *testing.T) {
	for _, errno := range []error{unix.ENOSYS, unix.EINVAL} {
		closeRange = func(uint, uint, uint) error { return errno }
		var fds []int
		for i := 0; i < 4; i++ {
			fd, err := unix.Open(os.DevNull, unix.O_RDONLY, 0) // no O_CLOEXEC
			if err != nil {
				t.Fatal(err)
			}
			fds = append(fds, fd)
		}
		slices.Sort(fds)
		if err := closeOnExecFrom(fds[1]); err != nil {
			t.Fatalf("%v: %v", errno, err)
		}
		for i, fd := range fds {
			fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
			if err != nil {
				t.Fatal(err)
			}
			if want := i > 0; (fl&unix.FD_CLOEXEC != 0) != want {
				t.Errorf("close_range gave %v: fd %d close-on-exec %v, want %v (from fd %d on)", errno, fd, !want, want, fds[1])
			}
			unix.Close(fd)
		}
	}
	closeRange = unix.CloseRange
	if err := closeOnExecFrom(math.MaxInt32); err != nil {
		t.Errorf("with close_range: %v", err)
	}
}
