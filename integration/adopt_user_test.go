//go:build linux

package integration

import (
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/internal/testutil"
)

// needRootNobody skips the test unless it runs as root with a user nobody
// (never under CI, where it runs as root).
func needRootNobody(t *testing.T) *user.User {
	t.Helper()
	nobody, err := user.Lookup("nobody")
	if os.Geteuid() != 0 || err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("under CI this test runs as root, with a user nobody: euid %d, %v", os.Geteuid(), err)
		}
		t.Skip("needs root and a user nobody")
	}
	return nobody
}

// TestAdoptUserWithoutPtrace: bind adoption with --user, where the primary
// must read the memory of workers of another user. As root, a server that
// binds its own port serves as nobody. Without CAP_SYS_PTRACE (Docker's
// default capability set), the probe, whose target runs as the workers
// do, finds that it cannot: --adopt-bind on is a start-up error in one
// line that names the capability, leaving nothing running; auto turns
// adoption off with one info line saying why, and a LISTEN_FDS worker
// serves without a warning.
func TestAdoptUserWithoutPtrace(t *testing.T) {
	t.Parallel()
	needAdoption(t)
	needRootNobody(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	noPtrace := []string{testutil.EnvNoPtrace + "=1"}
	open := func(dir string) { openToAll(t, filepath.Dir(dir), dir, filepath.Join(dir, "tmp")) }

	p := StartPrimary(t, Options{Server: "bind-v1", Ready: "delay:300ms", Prepare: open,
		Flags: []string{"--user", "nobody", "--adopt-bind", "on"}})
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	checkAdopted(t, p)
	p.shutdownAll(p.PID)

	p = StartPrimary(t, Options{Server: "bind-v1", Ready: "delay:300ms", Prepare: open, NoWait: true,
		Wrap: []string{self}, Env: noPtrace, Flags: []string{"--user", "nobody", "--adopt-bind", "on"}})
	st := p.WaitExit(30 * time.Second)
	p.readersWG.Wait()
	if st == nil || st.ExitCode() != 1 {
		t.Errorf("--adopt-bind on without CAP_SYS_PTRACE: %v, want exit status 1", st)
	}
	oneLine(t, "--adopt-bind on without CAP_SYS_PTRACE", strings.Join(p.Log.Lines(), "\n"),
		"--adopt-bind on: bind adoption cannot work here: the primary may not read the memory of a worker running as uid",
		"CAP_SYS_PTRACE", "--adopt-bind off")
	if left := waitGone(markedPIDs(p.Mark), 5*time.Second); len(left) > 0 {
		t.Errorf("processes left running: %v", left)
	}

	p = StartPrimary(t, Options{Prepare: open, Wrap: []string{self}, Env: noPtrace, Flags: []string{"--user", "nobody"}})
	offs := p.Log.Filter("bind adoption off")
	if len(offs) != 1 || !strings.Contains(offs[0].Str("reason"), "CAP_SYS_PTRACE") || offs[0].Str("level") != "info" {
		t.Errorf("events %v, want one info \"bind adoption off\" naming CAP_SYS_PTRACE", offs)
	}
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	if n := len(p.Log.Filter("worker bind adopted", "worker bind not adopted", "bind adoption failed")); n != 0 {
		t.Errorf("%d adoption events with adoption off\n%s", n, p.Tail(20))
	}
	p.shutdownAll(p.PID)
}

// freePortBoth returns a TCP port free on both 127.0.0.1 and ::1 (skipping
// the test where ::1 cannot be bound).
func freePortBoth(t *testing.T) int {
	t.Helper()
	for range 20 {
		l4, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l4.Addr().(*net.TCPAddr).Port
		l6, err := net.Listen("tcp6", net.JoinHostPort("::1", strconv.Itoa(port)))
		l4.Close()
		if err == nil {
			l6.Close()
			return port
		}
		if _, err := net.Listen("tcp6", "[::1]:0"); err != nil {
			t.Skipf("no IPv6 loopback: %v", err)
		}
	}
	t.Fatal("no port free on both 127.0.0.1 and ::1")
	return 0
}

// TestAdoptSeveralListenersOnePort: with --listen 127.0.0.1:P and
// --listen [::1]:P, a server that binds :P once adopts the first; the
// primary says, in one warning naming [::1]:P and what to do, that nothing
// accepts on the other, once (not again for the next workers, nor after a
// deploy).
func TestAdoptSeveralListenersOnePort(t *testing.T) {
	t.Parallel()
	needAdoption(t)
	port := strconv.Itoa(freePortBoth(t))
	p := StartPrimary(t, Options{Server: "bind-v1", Ready: "delay:300ms", Flags: []string{"--adopt-bind", "on"},
		Listen: []string{"127.0.0.1:" + port, "[::1]:" + port}})
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	ev, ok := p.Log.Wait(0, 15*time.Second, isMsg("listener not adopted"))
	if !ok {
		t.Fatalf("no \"listener not adopted\" warning\n%s", p.Tail(20))
	}
	if ev.Str("addr") != "[::1]:"+port || ev.Str("adopted") != "127.0.0.1:"+port || ev.Str("level") != "warn" {
		t.Errorf("warning %s, want one about [::1]:%s, which 127.0.0.1:%s shadows", ev.Raw, port, port)
	}
	for _, want := range []string{"nothing accepts the connections to [::1]:" + port, "--listen :" + port, "fd 3 (LISTEN_FDS)"} {
		if !strings.Contains(ev.Str("reason"), want) {
			t.Errorf("reason %q does not say %q", ev.Str("reason"), want)
		}
	}
	p.Install("bind-v2")
	p.DeployOK(60 * time.Second)
	p.WaitServing(p.URL(), "v2", 10*time.Second)
	// The new workers' binds are looked at 2s after they were adopted.
	mark := p.Log.Len()
	if ev, ok := p.Log.Wait(mark, 5*time.Second, isMsg("listener not adopted")); ok {
		t.Errorf("warned again: %s", ev.Raw)
	}
	if n := len(p.Log.Filter("listener not adopted")); n != 1 {
		t.Errorf("%d \"listener not adopted\" warnings, want 1", n)
	}
	p.shutdownAll(p.PID)
}

// notifyFDs counts the seccomp notification fds pid holds.
func notifyFDs(t *testing.T, pid int) int {
	t.Helper()
	links, err := fdLinks(pid)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range links {
		if strings.Contains(l, "seccomp notify") {
			n++
		}
	}
	return n
}

// TestAdoptLeftProcessesBounded: each worker of a one-slot primary leaves a
// process in a session of its own (out of its process group), which stays
// under its filter after the worker is replaced. The primary keeps serving
// the filters of the latest 4 such workers only: past that, one "bind
// adoption stopped" warning per filter it stops, and the notification fds
// it holds stay bounded.
func TestAdoptLeftProcessesBounded(t *testing.T) {
	t.Parallel()
	needAdoption(t)
	p := StartPrimary(t, Options{Workers: 1})
	c := freshClient(5 * time.Second)
	const keep, rounds = 4, 7
	var escaped []int
	var end time.Time
	for i := range rounds {
		status, body, err := get(c, p.URL()+"escape")
		pid, perr := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(body, "escaped=")))
		if err != nil || status != 200 || perr != nil {
			t.Fatalf("/escape: %d %q %v", status, body, err)
		}
		escaped = append(escaped, pid)
		p.DeployOK(60 * time.Second)
		// The worker replaced has exited before the next round.
		end = time.Now().Add(30 * time.Second)
		for len(p.LiveWorkers()) > 1 && time.Now().Before(end) {
			time.Sleep(10 * time.Millisecond)
		}
		if n := notifyFDs(t, p.PID); n > keep+2 {
			t.Errorf("after %d replaced workers the primary holds %d notification fds, want at most %d", i+1, n, keep+2)
		}
	}
	// A worker's filter is looked at when the next but one starts (the
	// next starts before it retires): in round r, the r-1 workers before
	// the current one have exited, those beyond the latest 4 are stopped.
	want := rounds - 1 - keep
	end = time.Now().Add(10 * time.Second)
	for len(p.Log.Filter("bind adoption stopped")) < want && time.Now().Before(end) {
		time.Sleep(10 * time.Millisecond)
	}
	stopped := p.Log.Filter("bind adoption stopped")
	if len(stopped) != want {
		t.Fatalf("%d \"bind adoption stopped\" warnings, want %d\n%s", len(stopped), want, p.Tail(30))
	}
	for _, e := range stopped {
		if e.Str("level") != "warn" || e.Int0("slot") != 0 || !strings.Contains(e.Str("reason"), "ENOSYS") {
			t.Errorf("warning %s", e.Raw)
		}
	}
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	// What the workers left is the test's to end; the primary reaps it.
	for _, pid := range escaped {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	if left := waitGone(escaped, 10*time.Second); len(left) > 0 {
		t.Errorf("left processes still there after SIGKILL: %v", left)
	}
	end = time.Now().Add(10 * time.Second)
	for len(zombiesOf(p.PID)) > 0 && time.Now().Before(end) {
		time.Sleep(10 * time.Millisecond)
	}
	if z := zombiesOf(p.PID); len(z) != 0 {
		t.Errorf("zombies of the primary left unreaped: %v", z)
	}
	p.shutdownAll(p.PID)
}
