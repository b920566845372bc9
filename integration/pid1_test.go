//go:build linux

package integration

import (
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/internal/testutil"
)

// containerCommand is the command of the Dockerfile in docs/containers.md
// (ENTRYPOINT, then CMD): handoff run, its flags, -- and the program.
func containerCommand(t *testing.T) []string {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "docs", "containers.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, dockerfile, _ := strings.Cut(string(b), "```dockerfile\n")
	dockerfile, _, _ = strings.Cut(dockerfile, "```")
	var entry, cmd []string
	for _, line := range strings.Split(dockerfile, "\n") {
		if rest, ok := strings.CutPrefix(line, "ENTRYPOINT "); ok {
			json.Unmarshal([]byte(rest), &entry)
		}
		if rest, ok := strings.CutPrefix(line, "CMD "); ok {
			json.Unmarshal([]byte(rest), &cmd)
		}
	}
	command := append(entry, cmd...)
	if len(command) < 4 || command[1] != "run" || !slices.Contains(command, "--") {
		t.Fatalf("docs/containers.md: no Dockerfile ENTRYPOINT and CMD for handoff run: %q", command)
	}
	return command
}

// TestPID1ReapsOrphansAndStopsOnTERM: handoff as PID 1 of a pid namespace
// (a container without an init), run with the command of the Dockerfile
// in docs/containers.md, reaps the orphan a worker leaves behind, takes
// nothing from its own workers, answers the probes, and on TERM drains
// and exits 0.
func TestPID1ReapsOrphansAndStopsOnTERM(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		testutil.Need(t, "unshare --pid needs root")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		testutil.Need(t, "no unshare")
	}
	// The Dockerfile's command, on loopback ports of its own, with the
	// test's server as the program; the harness puts its own flags (JSON
	// log, --workers 2, a pid file) before the command's, which win.
	command := containerCommand(t)
	end := slices.Index(command, "--")
	var flags, listen []string
	for i := 2; i < end; i++ {
		switch f := command[i]; {
		case f == "--listen" && i+1 < end:
			listen = append(listen, "127.0.0.1:0")
			i++
		case f == "--metrics" && i+1 < end:
			flags = append(flags, f, "127.0.0.1:0")
			i++
		default:
			flags = append(flags, f)
		}
	}
	p := StartPrimary(t, Options{Wrap: []string{unshare, "--pid", "--fork", "--mount-proc"},
		Listen: listen, Flags: flags, Args: command[end+2:]})
	var url string
	if ev, ok := p.Log.Wait(0, 0, isMsg("listening")); ok {
		url = "http://" + ev.Str("addr") + "/"
	}
	if ev, ok := p.Log.Wait(0, 0, isMsg("primary ready")); !ok || ev.Int0("primary") != 1 {
		t.Fatalf("the primary is not PID 1: %v", ev.Raw)
	}
	if _, ok := p.Log.Wait(0, 0, isMsg("running as PID 1: reaping orphans")); !ok {
		t.Errorf("no \"running as PID 1\" event")
	}
	// The primary's pid outside the namespace: unshare's only child.
	var host int
	for _, pid := range allPIDs() {
		if st, ok := readStat(pid); ok && st.PPid == p.PID {
			host = pid
		}
	}
	if host == 0 {
		t.Fatalf("no child of unshare %d", p.PID)
	}

	c := freshClient(5 * time.Second)
	if ev, ok := p.Log.Wait(0, 0, isMsg("metrics listening")); ok {
		for _, probe := range []string{"/readyz", "/healthz"} {
			if status, body, err := get(c, "http://"+ev.Str("addr")+probe); err != nil || status != 200 {
				t.Errorf("%s: %d %q %v", probe, status, body, err)
			}
		}
	} else if slices.Contains(command, "--metrics") {
		t.Errorf("no \"metrics listening\" event")
	}
	checkOrphansReaped(t, p, c, url, host)

	p.Signal(host, syscall.SIGTERM)
	st := p.WaitExit(30 * time.Second)
	if st == nil || st.ExitCode() != 0 {
		t.Fatalf("PID 1 after TERM: %v, want exit status 0\n%s", st, p.Tail(20))
	}
	if _, ok := p.Log.Wait(0, 0, isMsg("shutdown finished")); !ok {
		t.Errorf("no \"shutdown finished\"")
	}
	for _, e := range p.Log.Filter("worker exited")[1:] {
		if e.Str("status") != "exit status 0" {
			t.Errorf("a worker did not drain: %s", e.Raw)
		}
	}
}

// checkOrphansReaped has a worker of p (the primary is host, as this
// process sees it) leave an orphan three times, each of which the primary
// must reap ("orphan reaped", exit status 0), leaving no zombie; then a
// worker's crash must still reach the pool (not the reaper), which
// restarts it.
func checkOrphansReaped(t *testing.T, p *Primary, c *http.Client, url string, host int) {
	t.Helper()
	for round := 0; round < 3; round++ {
		mark := p.Log.Len()
		status, body, err := get(c, url+"orphan")
		if err != nil || status != 200 || !strings.HasPrefix(body, "orphan=") {
			t.Fatalf("/orphan: %d %q %v", status, body, err)
		}
		orphan, _ := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(body, "orphan=")))
		ev, ok := p.Log.Wait(mark, 10*time.Second, func(e Event) bool { return e.Msg == "orphan reaped" && e.Int0("pid") == orphan })
		if !ok {
			t.Fatalf("orphan %d (pid as the primary sees it) not reaped; zombies of the primary: %v\n%s", orphan, zombiesOf(host), p.Tail(20))
		}
		if st := ev.Str("status"); st != "exit status 0" {
			t.Errorf("orphan %d: %q", orphan, st)
		}
	}
	if z := zombiesOf(host); len(z) != 0 {
		t.Errorf("zombies left under the primary: %v", z)
	}
	// Its own workers are still its own: a crash is seen and restarted,
	// not taken by the reaper.
	mark := p.Log.Len()
	get(c, url+"exit?code=9")
	ev, ok := p.Log.Wait(mark, 10*time.Second, isMsg("worker exited"))
	if !ok || ev.Str("status") != "exit status 9" {
		t.Fatalf("worker crash as seen by the pool: %v", ev.Raw)
	}
	if _, ok := p.Log.Wait(mark, 10*time.Second, isMsg("worker restart scheduled")); !ok {
		t.Fatalf("no restart after the crash")
	}
	for _, e := range p.Log.Events()[mark:] {
		if e.Msg == "orphan reaped" {
			t.Errorf("the reaper took a worker: %s", e.Raw)
		}
	}
	// Only once the restarted worker is ready (it catches TERM).
	if _, ok := p.Log.Wait(mark, 10*time.Second, func(e Event) bool { return e.Msg == "worker ready" && e.Int0("slot") == ev.Int0("slot") }); !ok {
		t.Fatalf("the restarted worker is not ready")
	}
}

// TestSubreaperReapsOrphans: the primary (not PID 1 here) is a child
// subreaper: what a worker leaves running when it exits is re-parented to
// the primary, not to init (so it stays a descendant, which bind adoption
// needs under Yama's ptrace_scope 1), and reaped by it once it exits: no
// zombie is left, and the workers' own exits still reach the pool.
func TestSubreaperReapsOrphans(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{})
	if _, ok := p.Log.Wait(0, 0, isMsg("running as PID 1: reaping orphans")); ok {
		t.Errorf("\"running as PID 1\" logged by a primary that is not")
	}
	checkOrphansReaped(t, p, freshClient(5*time.Second), p.URL(), p.PID)
	p.shutdownAll(p.PID)
}

// zombiesOf lists the zombie children of pid.
func zombiesOf(pid int) []int {
	var out []int
	for _, c := range allPIDs() {
		if st, ok := readStat(c); ok && st.PPid == pid && st.State == 'Z' {
			out = append(out, c)
		}
	}
	return out
}
