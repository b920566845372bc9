//go:build linux

package integration

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/runtime"
)

// staleSocket leaves a socket file at path that nobody listens on, as a
// primary killed with SIGKILL does.
func staleSocket(t *testing.T, path string) {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
}

// shortDir is a directory with a short path, for control sockets.
func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "hl-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// statusPID asks the primary at the control socket ctl for its pid.
func statusPID(t *testing.T, ctl string) int {
	t.Helper()
	r := runHandoff(t, "", nil, nil, "status", "--control", ctl, "--json")
	var st runtime.Status
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &st) != nil {
		t.Fatalf("status --control %s: %s", ctl, r)
	}
	return st.Primary.Pid
}

// TestControlPathOnePrimary: two primaries started at the same moment on
// one control path (where a killed primary left a stale socket): exactly
// one runs, the other exits 1 with one line, and the socket answers for
// the one that runs. The path's lock goes to a new primary across a
// self-upgrade: a later primary on the path is refused, naming it; the
// final shutdown removes the socket and its lock file.
func TestControlPathOnePrimary(t *testing.T) {
	t.Parallel()
	for round := 0; round < 3; round++ {
		ctl := filepath.Join(shortDir(t), "c.sock")
		staleSocket(t, ctl)
		// Both wait at the gate, then exec handoff together.
		gate := filepath.Join(t.TempDir(), "go")
		wrap := []string{"/bin/sh", "-c", `while [ ! -e "$0" ]; do sleep 0.002; done; exec "$@"`, gate}
		o := Options{Workers: 1, Flags: []string{"--control", ctl}, NoWait: true, Wrap: wrap}
		ps := []*Primary{StartPrimary(t, o), StartPrimary(t, o)}
		writeBytes(t, gate, nil, 0o600)

		var running, refused []*Primary
		end := time.Now().Add(30 * time.Second)
		for len(running)+len(refused) < 2 {
			if time.Now().After(end) {
				t.Fatalf("round %d: after 30s, %d running and %d refused of 2 primaries\n%s\n%s", round, len(running), len(refused), ps[0].Tail(20), ps[1].Tail(20))
			}
			for i, p := range ps {
				if p == nil {
					continue
				}
				if _, ok := p.Log.Wait(0, 0, isMsg("primary ready")); ok {
					running = append(running, p)
					ps[i] = nil
				} else if p.Exited() {
					refused = append(refused, p)
					ps[i] = nil
				}
			}
			time.Sleep(10 * time.Millisecond)
		}
		if len(running) != 1 || len(refused) != 1 {
			t.Fatalf("round %d: %d primaries run on one control path, %d were refused; want 1 and 1", round, len(running), len(refused))
		}
		winner, loser := running[0], refused[0]
		if st := loser.WaitExit(5 * time.Second); st == nil || st.ExitCode() != 1 {
			t.Errorf("round %d: refused primary: %v, want exit status 1", round, st)
		}
		loser.readersWG.Wait()
		oneLine(t, "second primary", strings.Join(loser.Log.Lines(), "\n"), "--control "+ctl, "another handoff primary")
		if pid := statusPID(t, ctl); pid != winner.PID {
			t.Errorf("round %d: the control socket answers for pid %d, want the running primary %d", round, pid, winner.PID)
		}
		winner.shutdownAll(winner.PID)
		for _, f := range []string{ctl, ctl + ".lock"} {
			if _, err := os.Lstat(f); !os.IsNotExist(err) {
				t.Errorf("round %d: %s left after the shutdown: %v", round, f, err)
			}
		}
	}

	// Across a self-upgrade.
	ctl := filepath.Join(shortDir(t), "c.sock")
	p := StartPrimary(t, Options{Workers: 1, Flags: []string{"--control", ctl}})
	old := p.PID
	p.InstallHandoff()
	p.DeployOK(60 * time.Second)
	successor := p.waitSuccessor(old, 30*time.Second)
	if st := p.WaitExit(30 * time.Second); st == nil {
		t.Fatalf("old primary %d still running after the hand-over", old)
	}
	mark := newMark(t)
	r := runHandoff(t, "", []string{markEnv + "=" + mark}, nil, "run", "--listen", "127.0.0.1:0", "--workers", "1",
		"--control", ctl, "--", servers["v1"])
	if r.code != 1 || len(markedPIDs(mark)) != 0 {
		t.Errorf("a primary on the path of one that upgraded itself: %s; processes left: %v", r, markedPIDs(mark))
	}
	oneLine(t, "primary after a self-upgrade", r.stderr, "--control "+ctl, "pid "+strconv.Itoa(successor), "another handoff primary")
	if pid := statusPID(t, ctl); pid != successor {
		t.Errorf("the control socket answers for pid %d, want the new primary %d", pid, successor)
	}
	p.shutdownAll(successor)
	for _, f := range []string{ctl, ctl + ".lock"} {
		if _, err := os.Lstat(f); !os.IsNotExist(err) {
			t.Errorf("%s left after the final shutdown: %v", f, err)
		}
	}
}

// TestFindControlSkipsStale: beside a live primary's socket, the sockets
// and lock files of 200 dead primaries, two of them still listened on by
// a process that never answers (a dead primary's socket kept open by
// something else): plain status finds the live primary (not "3
// primaries"), at once, and the dead primaries' pairs are gone.
func TestFindControlSkipsStale(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{Workers: 1})
	live := p.ControlPath()
	var dead []string
	for i := 0; i < 200; i++ {
		path := filepath.Join(p.ControlDir, "tcp-127.0.0.1:"+strconv.Itoa(20000+i)+".sock")
		if i < 2 {
			// Listened on, never accepted.
			ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			ln.SetUnlinkOnClose(false)
			t.Cleanup(func() { ln.Close() })
		} else {
			staleSocket(t, path)
		}
		writeBytes(t, path+".lock", []byte("1\n"), 0o600)
		dead = append(dead, path)
	}
	start := time.Now()
	r := p.Ctl("status", "--json")
	took := time.Since(start)
	var st runtime.Status
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &st) != nil || st.Primary.Pid != p.PID {
		t.Fatalf("status beside 200 dead primaries' sockets: %s, want the live primary %d", r, p.PID)
	}
	t.Logf("status beside 200 dead primaries' sockets took %s", took)
	for _, path := range dead {
		for _, f := range []string{path, path + ".lock"} {
			if _, err := os.Lstat(f); err == nil {
				t.Errorf("%s is still there", f)
			}
		}
	}
	if _, err := os.Lstat(live); err != nil {
		t.Errorf("the live primary's socket: %v", err)
	}
	if _, err := os.Lstat(live + ".lock"); err != nil {
		t.Errorf("the live primary's lock: %v", err)
	}
	p.CtlOK("status")
}
