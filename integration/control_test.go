//go:build linux

package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/internal/control"
	"github.com/handoff-dev/handoff/internal/testutil"
	"github.com/handoff-dev/handoff/runtime"
)

// ctlResult is one run of a handoff command.
type ctlResult struct {
	stdout, stderr string
	code           int
}

func (r ctlResult) String() string {
	return "exit " + strconv.Itoa(r.code) + ", stdout " + strconv.Quote(r.stdout) + ", stderr " + strconv.Quote(r.stderr)
}

// runHandoff runs bin (handoffBin if "") with args and env added to the
// test's environment, as cred's user if cred is not nil, bounded by two
// minutes.
func runHandoff(t *testing.T, bin string, env []string, cred *syscall.Credential, args ...string) ctlResult {
	t.Helper()
	if bin == "" {
		bin = handoffBin
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("handoff %v: %v", args, err)
	}
	checkNoRace(t, errb.String())
	return ctlResult{out.String(), errb.String(), code}
}

// Ctl runs `handoff args...` with the primary's control directory, so the
// command finds its control socket as a user's would.
func (p *Primary) Ctl(args ...string) ctlResult {
	p.t.Helper()
	return runHandoff(p.t, "", []string{"HANDOFF_CONTROL_DIR=" + p.ControlDir}, nil, args...)
}

// CtlOK is Ctl, failing the test unless the command exits 0.
func (p *Primary) CtlOK(args ...string) ctlResult {
	p.t.Helper()
	r := p.Ctl(args...)
	if r.code != 0 {
		p.t.Fatalf("handoff %s: %s\n%s", strings.Join(args, " "), r, p.Tail(40))
	}
	return r
}

// Status runs `handoff status --json`.
func (p *Primary) Status() runtime.Status {
	p.t.Helper()
	r := p.CtlOK("status", "--json")
	var st runtime.Status
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		p.t.Fatalf("status --json: %v\n%s", err, r.stdout)
	}
	return st
}

// readyWorker is the pid of a worker that holds its slot, ready and not
// draining, as status shows it (a retired one may still drain a while).
func (p *Primary) readyWorker() int {
	p.t.Helper()
	for _, w := range p.Status().Workers {
		if w.State == "ready" {
			return w.Pid
		}
	}
	p.t.Fatalf("no ready worker in status")
	return 0
}

// ControlPath is the primary's control socket.
func (p *Primary) ControlPath() string {
	p.t.Helper()
	paths, _ := filepath.Glob(filepath.Join(p.ControlDir, "*.sock"))
	if len(paths) != 1 {
		p.t.Fatalf("control sockets in %s: %v, want one", p.ControlDir, paths)
	}
	return paths[0]
}

// readyWorkers counts the workers of a status that are ready.
func readyWorkers(st runtime.Status) int {
	n := 0
	for _, w := range st.Workers {
		if w.State == "ready" {
			n++
		}
	}
	return n
}

// waitStatus polls status until cond holds, failing the test after d.
func (p *Primary) waitStatus(what string, d time.Duration, cond func(runtime.Status) bool) runtime.Status {
	p.t.Helper()
	end := time.Now().Add(d)
	var st runtime.Status
	for {
		st = p.Status()
		if cond(st) {
			return st
		}
		if time.Now().After(end) {
			b, _ := json.Marshal(st)
			p.t.Fatalf("status: not %s within %s; last: %s", what, d, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// exactly reports whether st has n slots, each with one ready worker and
// nothing else running.
func exactly(n int) func(runtime.Status) bool {
	return func(st runtime.Status) bool {
		return st.Primary.Workers == n && len(st.Workers) == n && readyWorkers(st) == n
	}
}

// oneLine fails the test unless s is exactly one line starting "handoff: "
// that contains every want.
func oneLine(t *testing.T, what, s string, want ...string) {
	t.Helper()
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "handoff: ") {
		t.Errorf("%s: stderr %q, want one line starting \"handoff: \"", what, s)
		return
	}
	for _, w := range want {
		if !strings.Contains(lines[0], w) {
			t.Errorf("%s: %q does not say %q", what, lines[0], w)
		}
	}
}

// TestControlCommands: status shows the workers as a table and as JSON
// with the documented field names; reload deploys and reports done, or
// aborted with the reason and exit 1; TTIN and TTOU add and retire a
// worker; stop returns once the primary has exited and removed its socket.
func TestControlCommands(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{Workers: 2})

	// The socket and its directory are private.
	path := p.ControlPath()
	for f, want := range map[string]os.FileMode{p.ControlDir: 0o700, path: 0o600} {
		fi, err := os.Stat(f)
		if err != nil || fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v (%v), want %v", f, fi.Mode().Perm(), err, want)
		}
	}

	r := p.CtlOK("status")
	if !strings.Contains(r.stdout, "SLOT") || strings.Count(r.stdout, " ready ") != 2 || !strings.Contains(r.stdout, "primary "+strconv.Itoa(p.PID)) {
		t.Errorf("status table:\n%s", r.stdout)
	}
	r = p.CtlOK("status", "--json")
	var raw map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &raw); err != nil {
		t.Fatal(err)
	}
	// The documented names, which scripts rely on.
	for _, k := range []string{"primary", "workers", "upgrade"} {
		if _, ok := raw[k]; !ok {
			t.Errorf("status --json has no %q: %s", k, r.stdout)
		}
	}
	w0, _ := raw["workers"].([]any)
	if len(w0) != 2 {
		t.Fatalf("status --json workers: %s", r.stdout)
	}
	for _, k := range []string{"slot", "pid", "generation", "state", "started", "uptime_seconds", "restarts", "rss_bytes"} {
		if _, ok := w0[0].(map[string]any)[k]; !ok {
			t.Errorf("status --json worker has no %q: %s", k, r.stdout)
		}
	}
	st := p.Status()
	if st.Primary.Pid != p.PID || st.Primary.Generation != 1 || st.Upgrade != nil || st.Primary.Control != path {
		t.Errorf("status: %+v", st.Primary)
	}
	live := p.LiveWorkers()
	for _, w := range st.Workers {
		if _, ok := live[w.Pid]; !ok || w.RSSBytes <= 0 || w.Generation != 1 {
			t.Errorf("worker %+v: not a live worker of the log, or no RSS", w)
		}
	}

	// reload: done.
	p.Install("v2")
	r = p.CtlOK("reload")
	if strings.Count(r.stdout, "\n") != 1 || !strings.Contains(r.stdout, "done: generation 2") {
		t.Errorf("reload: %s", r)
	}
	p.WaitServing(p.URL(), "v2", 20*time.Second)

	// reload of a crashing build: aborted, with the reason.
	p.Install("crash")
	r = p.Ctl("reload")
	if r.code != 1 {
		t.Errorf("reload of a crashing build: %s, want exit 1", r)
	}
	oneLine(t, "reload of a crashing build", r.stderr, "reload aborted", "exited at start", "crashing at start")
	p.WaitServing(p.URL(), "v2", 20*time.Second)
	p.Install("v2")

	// TTIN, TTOU.
	p.Signal(p.PID, syscall.SIGTTIN)
	p.waitStatus("3 ready workers after TTIN", 30*time.Second, exactly(3))
	p.Signal(p.PID, syscall.SIGTTOU)
	p.waitStatus("2 ready workers after TTOU", 30*time.Second, exactly(2))

	// stop: returns once the primary has exited.
	r = p.CtlOK("stop")
	if p.WaitExit(5*time.Second) == nil {
		t.Fatalf("handoff stop returned (%s) but the primary still runs", r)
	}
	if !p.state.Success() {
		t.Errorf("primary exit: %v", p.state)
	}
	if _, ok := p.Log.Wait(0, time.Second, isMsg("shutdown finished")); !ok {
		t.Error("no \"shutdown finished\"")
	}
	if n := len(p.LiveWorkers()); n != 0 {
		t.Errorf("%d workers left after stop", n)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("control socket left after stop: %v", err)
	}
	r = p.Ctl("status")
	if r.code != 1 {
		t.Errorf("status of a stopped primary: %s, want exit 1", r)
	}
	oneLine(t, "status of a stopped primary", r.stderr, "no running primary")
}

// TestStatusDuringUpgrade: while slow workers are rolled, status shows the
// upgrade and its step; reload reports done once the roll finished.
func TestStatusDuringUpgrade(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{Workers: 2})
	p.Install("slowready")
	reload := make(chan ctlResult, 1)
	go func() { reload <- p.Ctl("reload") }()
	st := p.waitStatus("upgrading", 60*time.Second, func(st runtime.Status) bool {
		return st.Upgrade != nil && st.Upgrade.Step >= 1
	})
	u := st.Upgrade
	if u.Kind != "workers" || u.Generation != 2 || u.Steps != 2 || u.Step > 2 || u.ElapsedSeconds <= 0 {
		t.Errorf("upgrade in status: %+v", u)
	}
	r := p.CtlOK("status")
	if !strings.Contains(r.stdout, "upgrade to generation 2 (workers): step") {
		// The roll may have ended between the two requests.
		if p.Status().Upgrade != nil {
			t.Errorf("status table during the upgrade:\n%s", r.stdout)
		}
	}
	select {
	case r := <-reload:
		if r.code != 0 || !strings.Contains(r.stdout, "done: generation 2") {
			t.Errorf("reload: %s", r)
		}
	case <-time.After(90 * time.Second):
		t.Fatal("reload did not return")
	}
	st = p.Status()
	if st.Upgrade != nil || st.Primary.Generation != 2 {
		t.Errorf("after the reload: upgrade %+v, generation %d", st.Upgrade, st.Primary.Generation)
	}
}

// TestControlAcrossSelfUpgrade: a scaled pool stays scaled when the
// primary upgrades itself; the control socket answers throughout (polled
// every few milliseconds: never missing, never silent), the old primary
// shows the new one's steps, reload through the old primary reports done
// once the new primary has finished, and a scale asked for meanwhile is
// done by the new primary.
func TestControlAcrossSelfUpgrade(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{Workers: 2})
	p.CtlOK("scale", "3")
	p.waitStatus("3 workers", 30*time.Second, exactly(3))
	path := p.ControlPath()

	stop := make(chan struct{})
	var (
		mu       sync.Mutex
		answers  = map[int]int{} // by pid
		failures []string
		steps    = map[int]bool{}
	)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			rep, err := control.Call(ctx, path, control.Request{Op: "status"})
			cancel()
			mu.Lock()
			switch {
			case err != nil:
				failures = append(failures, err.Error())
			case !rep.OK || rep.Status == nil:
				failures = append(failures, rep.Error)
			default:
				answers[rep.Pid]++
				if u := rep.Status.Upgrade; u != nil && u.Kind == "primary" && u.Step > 0 {
					steps[u.Step] = true
				}
			}
			mu.Unlock()
			time.Sleep(5 * time.Millisecond)
		}
	}()

	p.Install("slowready")
	p.InstallHandoff()
	reload := make(chan ctlResult, 1)
	go func() { reload <- p.Ctl("reload") }()
	// A scale asked of the old primary while it hands over waits behind
	// the upgrade, is told to retry and is done by the new primary.
	if _, ok := p.Log.Wait(0, 60*time.Second, func(e Event) bool {
		return e.Msg == "upgrade step" && e.Int0("primary") != p.PID
	}); !ok {
		t.Fatalf("no step of the new primary\n%s", p.Tail(40))
	}
	scale := p.Ctl("scale", "4")
	r := <-reload
	newPID := p.Current()
	// Keep polling past the hand-over, until the new primary has answered
	// a few times.
	for end := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		n := answers[newPID]
		mu.Unlock()
		if n >= 5 || time.Now().After(end) {
			break
		}
	}
	close(stop)
	wg.Wait()

	if r.code != 0 || !strings.Contains(r.stdout, "done") {
		t.Fatalf("reload: %s\n%s", r, p.Tail(60))
	}
	if newPID == p.PID {
		t.Fatalf("no new primary after the upgrade")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(failures) > 0 {
		t.Errorf("%d status requests failed during the upgrade, first: %q", len(failures), failures[0])
	}
	if answers[p.PID] == 0 || answers[newPID] == 0 {
		t.Errorf("answers by primary %v: want some from the old (%d) and the new (%d)", answers, p.PID, newPID)
	}
	if len(steps) == 0 {
		t.Errorf("no status showed a step of the primary upgrade")
	}
	t.Logf("status answers %v, steps seen %v", answers, steps)

	if scale.code != 0 || !strings.Contains(scale.stdout, "scaled to 4 workers (primary "+strconv.Itoa(newPID)+")") {
		t.Errorf("scale during the hand-over: %s, want it done by the new primary %d", scale, newPID)
	}
	st := p.waitStatus("4 ready workers of the new primary", 30*time.Second, func(st runtime.Status) bool {
		return st.Primary.Pid == newPID && exactly(4)(st)
	})
	for _, w := range st.Workers {
		if w.Generation != 2 {
			t.Errorf("worker %+v: want generation 2", w)
		}
	}
	if st.Primary.Control != path {
		t.Errorf("the new primary's control socket: %s, want %s", st.Primary.Control, path)
	}
	p.WaitServing(p.URL(), "vslow", 20*time.Second)
}

// TestScaleUnderLoad: 2 → 4 → 1 workers while clients send requests: not
// one fails, and the status shows each size once the command returns.
func TestScaleUnderLoad(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{Workers: 2})
	load := startLoad(t, p.URL())

	r := p.CtlOK("scale", "4")
	if !strings.Contains(r.stdout, "scaled to 4 workers") {
		t.Errorf("scale 4: %s", r)
	}
	if st := p.Status(); !exactly(4)(st) {
		t.Errorf("after scale 4: %d slots, %d workers, %d ready", st.Primary.Workers, len(st.Workers), readyWorkers(st))
	}
	waitRequests(t, load, 1000, 30*time.Second)
	if r := p.CtlOK("scale", "1"); !strings.Contains(r.stdout, "scaled to 1 worker (primary") {
		t.Errorf("scale 1: %s", r)
	}
	st := p.Status()
	if st.Primary.Workers != 1 || readyWorkers(st) != 1 {
		t.Errorf("after scale 1: %d slots, %d ready", st.Primary.Workers, readyWorkers(st))
	}
	p.waitStatus("the removed workers gone", 30*time.Second, exactly(1))
	waitRequests(t, load, 1000, 30*time.Second)
	res := checkLoad(t, load, "v1")
	if res.Requests < 2000 {
		t.Errorf("only %d requests", res.Requests)
	}
	// Relative sizes too, and their limits.
	p.CtlOK("scale", "+2")
	p.waitStatus("3 workers", 30*time.Second, exactly(3))
	r = p.Ctl("scale", "-5")
	if r.code != 1 {
		t.Errorf("scale -5 of 3: %s, want exit 1", r)
	}
	oneLine(t, "scale -5", r.stderr, "from 3 to -2")
	if st := p.Status(); st.Primary.Workers != 3 {
		t.Errorf("a refused scale changed the size to %d", st.Primary.Workers)
	}
}

// nobody returns the credentials of the user nobody.
func nobody(t *testing.T) *syscall.Credential {
	t.Helper()
	if os.Geteuid() != 0 {
		testutil.Need(t, "needs root to run a client as another user")
	}
	u, err := user.Lookup("nobody")
	if err != nil {
		testutil.Need(t, "no user nobody: %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
}

// TestControlRefusesOtherUsers: another user cannot reach the default
// socket (its directory is 0700); where it can reach one, the primary
// checks its credentials and refuses it, and keeps serving.
func TestControlRefusesOtherUsers(t *testing.T) {
	t.Parallel()
	cred := nobody(t)
	// A directory nobody may enter, with a handoff it may run.
	open, err := os.MkdirTemp("", "hc-open-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(open) })
	if err := os.Chmod(open, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(open, "handoff")
	if err := copyFile(handoffBin, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(open, "control.sock")
	p := StartPrimary(t, Options{Workers: 1, Flags: []string{"--control", sock}})

	// The default directory: not even reachable. (The harness puts it in
	// a 0700 directory of its own; chmod the parent so that only the
	// control directory's own mode stands in the way.)
	q := StartPrimary(t, Options{Workers: 1})
	qpath := q.ControlPath()
	if err := os.Chmod(filepath.Dir(q.ControlDir), 0o755); err != nil {
		t.Fatal(err)
	}
	r := runHandoff(t, bin, nil, cred, "status", "--control", qpath)
	if r.code != 1 {
		t.Errorf("nobody, default socket: %s, want exit 1", r)
	}
	oneLine(t, "nobody, default socket", r.stderr, "permission denied")

	// The socket file's mode stops nobody too; open it up, so that the
	// primary's credential check is what refuses.
	r = runHandoff(t, bin, nil, cred, "status", "--control", sock)
	oneLine(t, "nobody, 0600 socket", r.stderr, "permission denied")
	if err := os.Chmod(sock, 0o666); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range []string{"status", "stop", "reload"} {
		r = runHandoff(t, bin, nil, cred, cmd, "--control", sock)
		if r.code != 1 {
			t.Errorf("nobody: %s: %s, want exit 1", cmd, r)
		}
		oneLine(t, "nobody: "+cmd, r.stderr, "permission denied: uid "+strconv.Itoa(int(cred.Uid))+" may not control this primary")
	}
	if ev, ok := p.Log.Wait(0, 5*time.Second, isMsg("control request refused")); !ok || ev.Int0("uid") != int(cred.Uid) {
		t.Errorf("no \"control request refused\" for uid %d", cred.Uid)
	}
	// Still serving, still answering its own user.
	r = runHandoff(t, bin, nil, nil, "status", "--control", sock)
	if r.code != 0 || p.Exited() {
		t.Fatalf("status as root after the refusals: %s", r)
	}
	p.WaitServing(p.URL(), "v1", 20*time.Second)
}

// TestControlMistakes: a --control path that is not a socket, or that a
// live primary serves, stops a start with one line and nothing left
// running; a stale socket is replaced; garbage on the socket gets an
// error answer; commands without a primary, with bad arguments, or with
// several primaries to choose from say so in one line.
func TestControlMistakes(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	first := StartPrimary(t, Options{Workers: 1})
	firstPath := first.ControlPath()

	start := func(t *testing.T, control string) (ctlResult, string) {
		t.Helper()
		mark := newMark(t)
		r := runHandoff(t, "", []string{markEnv + "=" + mark}, nil, "run", "--listen", "127.0.0.1:0", "--workers", "1",
			"--control", control, "--", servers["v1"])
		return r, mark
	}
	t.Run("not a socket", func(t *testing.T) {
		file := filepath.Join(dir, "file")
		writeBytes(t, file, []byte("x"), 0o600)
		r, mark := start(t, file)
		if r.code != 1 || len(markedPIDs(mark)) != 0 {
			t.Errorf("%s; processes left: %v", r, markedPIDs(mark))
		}
		oneLine(t, "not a socket", r.stderr, "--control "+file, "not a socket")
	})
	t.Run("second primary", func(t *testing.T) {
		r, mark := start(t, firstPath)
		if r.code != 1 || len(markedPIDs(mark)) != 0 {
			t.Errorf("%s; processes left: %v", r, markedPIDs(mark))
		}
		oneLine(t, "second primary", r.stderr, "--control "+firstPath, "pid "+strconv.Itoa(first.PID), "another handoff primary")
		first.CtlOK("status")
	})
	t.Run("stale socket", func(t *testing.T) {
		stale := filepath.Join(dir, "stale.sock")
		ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		ln.SetUnlinkOnClose(false)
		ln.Close()
		p := StartPrimary(t, Options{Workers: 1, Flags: []string{"--control", stale}})
		r := runHandoff(t, "", nil, nil, "stop", "--control", stale)
		if r.code != 0 || p.WaitExit(10*time.Second) == nil {
			t.Errorf("stop through a replaced stale socket: %s", r)
		}
	})
	t.Run("garbage", func(t *testing.T) {
		for _, line := range []string{"garbage\n", `{"op":"bogus"}` + "\n", strings.Repeat("x", 10000), "\x00\xff\n", `{"op":"scale","workers":-3}` + "\n"} {
			c, err := net.Dial("unix", firstPath)
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(10 * time.Second))
			c.Write([]byte(line))
			var rep control.Reply
			err = json.NewDecoder(c).Decode(&rep)
			c.Close()
			if err != nil || rep.OK || !strings.HasPrefix(rep.Error, "bad request: ") {
				t.Errorf("%.20q: reply %+v, %v", line, rep, err)
			}
		}
		first.CtlOK("status")
	})
	t.Run("no primary", func(t *testing.T) {
		r := runHandoff(t, "", nil, nil, "status", "--control", filepath.Join(dir, "none.sock"))
		if r.code != 1 {
			t.Errorf("%s, want exit 1", r)
		}
		oneLine(t, "no primary", r.stderr, "none.sock", "no such socket")
		r = runHandoff(t, "", []string{"HANDOFF_CONTROL_DIR=" + filepath.Join(dir, "empty")}, nil, "reload")
		if r.code != 1 {
			t.Errorf("%s, want exit 1", r)
		}
		oneLine(t, "no primary found", r.stderr, "no running primary found")
	})
	t.Run("usage", func(t *testing.T) {
		for _, args := range [][]string{
			{"scale"}, {"scale", "abc"}, {"scale", "0"}, {"scale", "5000"}, {"scale", "+0"}, {"scale", "1", "2"},
			{"status", "extra"}, {"status", "--bogus"}, {"reload", "--control"}, {"stop", "now"}, {"frobnicate"},
		} {
			r := runHandoff(t, "", []string{"HANDOFF_CONTROL_DIR=" + first.ControlDir}, nil, args...)
			if r.code != 2 {
				t.Errorf("handoff %v: %s, want exit 2", args, r)
			}
			oneLine(t, strings.Join(args, " "), r.stderr)
		}
		for _, cmd := range []string{"status", "reload", "scale", "stop"} {
			r := runHandoff(t, "", nil, nil, cmd, "--help")
			if r.code != 0 || !strings.Contains(r.stdout, "Usage: handoff "+cmd) {
				t.Errorf("handoff %s --help: %s", cmd, r)
			}
		}
	})
	t.Run("several primaries", func(t *testing.T) {
		other := StartPrimary(t, Options{Workers: 1, Env: []string{"HANDOFF_CONTROL_DIR=" + first.ControlDir}})
		r := runHandoff(t, "", []string{"HANDOFF_CONTROL_DIR=" + first.ControlDir}, nil, "status")
		if r.code != 1 {
			t.Errorf("%s, want exit 1", r)
		}
		oneLine(t, "several primaries", r.stderr, "2 primaries", "--control", firstPath)
		other.Signal(other.PID, syscall.SIGTERM)
		if other.WaitExit(30*time.Second) == nil {
			t.Fatal("the other primary did not stop")
		}
		first.CtlOK("status")
	})
}

// TestControlDirSymlinkRefused: a symlink planted by another user in
// place of the default control directory stops the start with one line;
// the directory it points to keeps its mode and gets no socket, and
// nothing is left running.
func TestControlDirSymlinkRefused(t *testing.T) {
	t.Parallel()
	victim, link := testutil.PlantSymlink(t, "handoff-0")
	p := StartPrimary(t, Options{NoWait: true, Workers: 1, Env: []string{"HANDOFF_CONTROL_DIR=" + link}})
	st := p.WaitExit(30 * time.Second)
	if st == nil || st.ExitCode() != 1 {
		t.Fatalf("start with a symlinked control directory: %v, want exit 1\n%s", st, p.Tail(20))
	}
	p.readersWG.Wait()
	if lines := p.Log.Lines(); len(lines) != 1 || !strings.HasPrefix(lines[0], "handoff: control socket "+link) || !strings.Contains(lines[0], "is a symbolic link") {
		t.Errorf("stderr %q, want one line saying %s is a symbolic link", lines, link)
	}
	if fi, err := os.Stat(victim); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("%s: mode %v (%v), want 0755 as it was", victim, fi.Mode().Perm(), err)
	}
	if ents, _ := os.ReadDir(victim); len(ents) != 0 {
		t.Errorf("%s got %d entries, want none", victim, len(ents))
	}
	if pids := markedPIDs(p.Mark); len(pids) != 0 {
		t.Errorf("processes left: %v", pids)
	}
}
