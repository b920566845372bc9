//go:build linux

package workerpool

import (
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// An ExtraFD reaches the exec step after the listeners, named in the
// environment; the command itself does not keep it (it is for the exec
// step). Started gets the worker's pid and, with ReadyBind, a func that
// makes it ready.
func TestLaunchExtraFD(t *testing.T) {
	e := newProcEnv(t)
	e.l.Ready = ReadyBind
	type started struct {
		pid   int
		ready func()
	}
	got := make(chan started, 1)
	var fd int
	e.l.PrepareFD = func(slot, generation int, _ []int) (*ExtraFD, error) {
		if slot != 1 || generation != 4 {
			t.Errorf("PrepareFD(%d, %d), want (1, 4)", slot, generation)
		}
		var err error
		fd, err = unix.Open(os.DevNull, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, err
		}
		return &ExtraFD{FD: fd, Env: func(n int) string { return "WP_EXTRA=" + strconv.Itoa(n) },
			Started: func(pid int, ready func()) {
				unix.Close(fd)
				got <- started{pid, ready}
			}}, nil
	}
	path := filepath.Join(e.dir, "report.json")
	p := e.launch(t, 1, e.spec(4, "WP_REPORT="+path))
	s := <-got
	if s.pid != p.Pid() || s.ready == nil {
		t.Fatalf("Started(%d, %v), want the worker's pid %d and a ready func", s.pid, s.ready != nil, p.Pid())
	}
	select {
	case <-p.Ready():
		t.Fatal("ready before the bind")
	default:
	}
	s.ready()
	waitChan(t, p.Ready(), "ready")
	for end := time.Now().Add(waitLimit); ; time.Sleep(5 * time.Millisecond) {
		if _, err := os.Stat(path); err == nil {
			break
		}
		if time.Now().After(end) {
			t.Fatal("no report from the worker")
		}
	}
	r := readReport(t, path)
	if r.Env["WP_EXTRA"] != "4" {
		t.Errorf("WP_EXTRA=%q, want 4 (after stdio and the listener)", r.Env["WP_EXTRA"])
	}
	if slices.ContainsFunc(r.Fds, func(f fdInfo) bool { return f.Fd == 4 && !runtimeFd(f) }) {
		t.Errorf("the command has the extra fd open: %v", r.Fds)
	}
}

// A worker that cannot be started gets Started(0, nil), and Launch fails.
func TestLaunchExtraFDNotStarted(t *testing.T) {
	e := newProcEnv(t)
	e.l.Self = filepath.Join(t.TempDir(), "missing")
	calls := 0
	e.l.PrepareFD = func(slot, generation int, _ []int) (*ExtraFD, error) {
		fd, err := unix.Open(os.DevNull, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, err
		}
		t.Cleanup(func() { unix.Close(fd) })
		return &ExtraFD{FD: fd, Env: func(n int) string { return "WP_EXTRA=" + strconv.Itoa(n) },
			Started: func(pid int, ready func()) {
				calls++
				if pid != 0 || ready != nil {
					t.Errorf("Started(%d, %v), want (0, nil)", pid, ready != nil)
				}
			}}, nil
	}
	if _, err := e.l.Launch(0, e.spec(1), nil); err == nil {
		t.Fatal("Launch of a missing executable succeeded")
	}
	if calls != 1 {
		t.Errorf("Started called %d times, want once", calls)
	}
}

// With ReadyBind and a ReadyDelay, a worker that never binds (it takes its
// socket from LISTEN_FDS) and says nothing is ready once it has run that
// long; without the delay it waits for the bind.
func TestLaunchReadyBindFallsBackToDelay(t *testing.T) {
	e := newProcEnv(t)
	e.l.Ready = ReadyBind
	p := e.launch(t, 0, e.spec(1))
	e.l.ReadyDelay = 100 * time.Millisecond
	q := e.launch(t, 1, e.spec(1))
	waitChan(t, q.Ready(), "ready after the delay")
	select {
	case <-p.Ready():
		t.Fatal("ready without a bind, and no delay asked for")
	default:
	}
}
