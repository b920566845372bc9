package integration

import (
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeSystemd is the receiving end of a NOTIFY_SOCKET, as systemd's.
type fakeSystemd struct {
	conn *net.UnixConn
	mu   sync.Mutex
	msgs []string
}

func newFakeSystemd(t *testing.T) (*fakeSystemd, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeSystemd{conn: conn}
	t.Cleanup(func() { conn.Close() })
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			f.mu.Lock()
			f.msgs = append(f.msgs, string(buf[:n]))
			f.mu.Unlock()
		}
	}()
	return f, path
}

// waitFor returns the index of the first message from index from on that
// holds every one of lines.
func (f *fakeSystemd) waitFor(t *testing.T, from int, d time.Duration, lines ...string) int {
	t.Helper()
	end := time.Now().Add(d)
	for {
		f.mu.Lock()
		msgs := append([]string(nil), f.msgs...)
		f.mu.Unlock()
		for i := from; i < len(msgs); i++ {
			all := true
			for _, l := range lines {
				all = all && strings.Contains("\n"+msgs[i]+"\n", "\n"+l+"\n")
			}
			if all {
				return i
			}
		}
		if time.Now().After(end) {
			t.Fatalf("no notification with %q within %s; got %q", lines, d, msgs)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSystemdNotify: under systemd (NOTIFY_SOCKET set for the primary),
// the primary says READY=1 once its workers are ready, RELOADING=1 then
// READY=1 around a deploy, and after a hand-over the new primary sends
// MAINPID= with its pid, so ExecReload's kill -HUP $MAINPID reaches it;
// the workers never see that socket.
func TestSystemdNotify(t *testing.T) {
	t.Parallel()
	sd, path := newFakeSystemd(t)
	p := StartPrimary(t, Options{Env: []string{"NOTIFY_SOCKET=" + path}})
	i := sd.waitFor(t, 0, 10*time.Second, "READY=1", "MAINPID="+strconv.Itoa(p.PID))

	p.Install("v2")
	p.DeployOK(30 * time.Second)
	i = sd.waitFor(t, i+1, 10*time.Second, "RELOADING=1")
	i = sd.waitFor(t, i+1, 10*time.Second, "READY=1")

	p.Install("v3")
	p.InstallHandoff()
	p.DeployOK(30 * time.Second)
	successor := p.waitSuccessor(p.PID, 30*time.Second)
	sd.waitFor(t, i+1, 10*time.Second, "MAINPID="+strconv.Itoa(successor), "READY=1")

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
	sd.waitFor(t, 0, 10*time.Second, "STOPPING=1")
}
