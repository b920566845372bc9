//go:build linux

package integration

import (
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// notification is one datagram a fake systemd received, with the pid of
// its sender (SO_PASSCRED), as systemd checks it against NotifyAccess=.
type notification struct {
	pid    int
	fields map[string]string
	raw    string
}

func (n notification) String() string { return fmt.Sprintf("pid %d: %q", n.pid, n.raw) }

// fakeSystemd is the receiving end of a NOTIFY_SOCKET, as systemd's.
type fakeSystemd struct {
	conn *net.UnixConn
	mu   sync.Mutex
	msgs []notification
}

// droppedByNotifyAccessMain lists the messages that systemd with
// NotifyAccess=main would have dropped, the service's main process
// starting as started: those not from the main process of their time;
// MAINPID= in a message it takes makes that pid the main process.
func droppedByNotifyAccessMain(msgs []notification, started int) []notification {
	var dropped []notification
	main := started
	for _, m := range msgs {
		if m.pid != main {
			dropped = append(dropped, m)
			continue
		}
		if pid, err := strconv.Atoi(m.fields["MAINPID"]); err == nil {
			main = pid
		}
	}
	return dropped
}

func newFakeSystemd(t *testing.T) (*fakeSystemd, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	rc, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	rc.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1) })
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeSystemd{conn: conn}
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf, oob := make([]byte, 4096), make([]byte, 1024)
		for {
			n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
			if err != nil {
				return
			}
			m := notification{pid: -1, fields: map[string]string{}, raw: string(buf[:n])}
			if scms, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
				for _, scm := range scms {
					if cred, err := unix.ParseUnixCredentials(&scm); err == nil {
						m.pid = int(cred.Pid)
					}
				}
			}
			for _, line := range strings.Split(m.raw, "\n") {
				if k, v, ok := strings.Cut(line, "="); ok {
					m.fields[k] = v
				}
			}
			f.mu.Lock()
			f.msgs = append(f.msgs, m)
			f.mu.Unlock()
		}
	}()
	return f, path
}

func (f *fakeSystemd) all() []notification {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]notification(nil), f.msgs...)
}

// waitFor returns the index of the first message from index from on that
// holds every one of lines (VAR=VALUE).
func (f *fakeSystemd) waitFor(t *testing.T, from int, d time.Duration, lines ...string) int {
	t.Helper()
	end := time.Now().Add(d)
	for {
		msgs := f.all()
		for i := from; i < len(msgs); i++ {
			all := true
			for _, l := range lines {
				k, v, _ := strings.Cut(l, "=")
				got, ok := msgs[i].fields[k]
				all = all && ok && got == v
			}
			if all {
				return i
			}
		}
		if time.Now().After(end) {
			t.Fatalf("no notification with %q within %s; got %v", lines, d, msgs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSystemdNotify: under systemd (NOTIFY_SOCKET set for the primary),
// the primary says READY=1 once its workers are ready, RELOADING=1 then
// READY=1 around a deploy; around a self-upgrade the old primary says
// RELOADING=1 and, once the new one is ready, MAINPID= with the new one's
// pid (so ExecReload's kill -HUP $MAINPID reaches it, and the old one's
// exit is not the service's), then the new one READY=1, with nothing from
// the old one after that; STOPPING=1 comes last, from the primary that
// stops. Every notification comes from the main pid of its time, so
// NotifyAccess=main, which the shipped unit sets, drops none; workers
// never see the socket.
func TestSystemdNotify(t *testing.T) {
	t.Parallel()
	sd, path := newFakeSystemd(t)
	p := StartPrimary(t, Options{Env: []string{"NOTIFY_SOCKET=" + path}})
	old := strconv.Itoa(p.PID)
	i := sd.waitFor(t, 0, 10*time.Second, "READY=1", "MAINPID="+old)

	p.Install("v2")
	p.DeployOK(30 * time.Second)
	i = sd.waitFor(t, i+1, 10*time.Second, "RELOADING=1")
	if _, ok := sd.all()[i].fields["MONOTONIC_USEC"]; !ok {
		t.Errorf("RELOADING=1 without MONOTONIC_USEC: %v", sd.all()[i])
	}
	i = sd.waitFor(t, i+1, 10*time.Second, "READY=1")

	p.Install("v3")
	p.InstallHandoff()
	p.DeployOK(30 * time.Second)
	successor := p.waitSuccessor(p.PID, 30*time.Second)
	reloading := sd.waitFor(t, i+1, 10*time.Second, "RELOADING=1")
	moved := sd.waitFor(t, reloading+1, 10*time.Second, "MAINPID="+strconv.Itoa(successor))
	if m := sd.all()[moved]; m.pid != p.PID || m.fields["READY"] != "" {
		t.Errorf("the first MAINPID=%d is %v, want it alone from the old primary %d", successor, m, p.PID)
	}
	i = sd.waitFor(t, moved+1, 10*time.Second, "READY=1")
	if left := waitGone([]int{p.PID}, 30*time.Second); len(left) > 0 {
		t.Fatalf("old primary %d still running", p.PID)
	}

	// kill -HUP $MAINPID: a deploy through the new primary.
	p.Install("v4")
	u := p.Deploy(30 * time.Second)
	if u.Aborted() || u.Started.Int0("primary") != successor {
		t.Fatalf("deploy after the hand-over: %s", u.End.Raw)
	}
	p.WaitServing(p.URL(), "v4", 10*time.Second)
	_, body, err := get(freshClient(5*time.Second), p.URL()+"env")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(body, path) {
		t.Errorf("a worker sees the primary's NOTIFY_SOCKET %s", path)
	}
	p.shutdownAll(successor)
	stopping := sd.waitFor(t, i+1, 10*time.Second, "STOPPING=1")

	msgs := sd.all()
	if stopping != len(msgs)-1 || msgs[stopping].pid != successor {
		t.Errorf("STOPPING=1 (from %d) is not the last notification, from the new primary %d: %v", msgs[stopping].pid, successor, msgs)
	}
	// Who said what: the old primary up to its MAINPID= of the new one,
	// the new one from then on.
	for k, m := range msgs {
		want := p.PID
		if k > moved {
			want = successor
		}
		if m.pid != want {
			t.Errorf("notification %d %v: want it from %d", k, m, want)
		}
	}
	// The order: READY, then pairs of RELOADING and READY (the one after
	// the self-upgrade with MAINPID), then STOPPING.
	var seq []string
	for _, m := range msgs {
		switch {
		case m.fields["STOPPING"] == "1":
			seq = append(seq, "STOPPING")
		case m.fields["RELOADING"] == "1":
			seq = append(seq, "RELOADING")
		case m.fields["READY"] != "1" && m.fields["MAINPID"] != "":
			seq = append(seq, "MAINPID")
		case m.fields["READY"] == "1":
			seq = append(seq, "READY")
		}
	}
	want := "READY RELOADING READY RELOADING MAINPID READY RELOADING READY STOPPING"
	if got := strings.Join(seq, " "); got != want {
		t.Errorf("notifications in the order %s\nwant %s\n%v", got, want, msgs)
	}
	if dropped := droppedByNotifyAccessMain(msgs, p.PID); len(dropped) > 0 {
		t.Errorf("NotifyAccess=main would drop %v", dropped)
	}
}

// TestSystemdNotifyRefusedDeploy: after a refused deploy, systemd's
// STATUS= names the generation that still serves, and why the new one was
// refused; after a good one, the new generation.
func TestSystemdNotifyRefusedDeploy(t *testing.T) {
	t.Parallel()
	sd, path := newFakeSystemd(t)
	p := StartPrimary(t, Options{Env: []string{"NOTIFY_SOCKET=" + path}})
	i := sd.waitFor(t, 0, 10*time.Second, "READY=1", "STATUS=serving generation 1")

	p.Install("crash")
	if u := p.Deploy(30 * time.Second); !u.Aborted() || u.Gen != 2 {
		t.Fatalf("deploy of a build that crashes: %s", u.End.Raw)
	}
	i = sd.waitFor(t, i+1, 10*time.Second, "RELOADING=1", "STATUS=deploying generation 2")
	i = sd.waitFor(t, i+1, 10*time.Second, "READY=1")
	status := sd.all()[i].fields["STATUS"]
	if !strings.HasPrefix(status, "serving generation 1; generation 2 aborted: ") || !strings.Contains(status, "exit status 3") ||
		!strings.Contains(status, crashLine) {
		t.Errorf("STATUS after a refused deploy: %q, want generation 1 serving and why 2 was refused", status)
	}

	p.Install("v2")
	p.DeployOK(30 * time.Second)
	sd.waitFor(t, i+1, 10*time.Second, "READY=1", "STATUS=serving generation 3")
}
