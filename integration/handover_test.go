//go:build linux

package integration

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/internal/loadgen"
)

// brokenHandoff is a "new handoff binary" that fails as soon as it starts.
const brokenHandoff = "#!/bin/sh\necho broken >&2; exit 1\n"

// installFile puts content at path by rename, as a deploy would.
func installFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".new")
	writeBytes(t, tmp, []byte(content), 0o755)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// switchSymlink points link at target atomically: a new symlink renamed
// over the old one.
func switchSymlink(t *testing.T, link, target string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(link), "."+filepath.Base(link)+".new")
	os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, link); err != nil {
		t.Fatal(err)
	}
}

// pinnedConn is one keep-alive TCP connection, and so one worker.
type pinnedConn struct {
	conn  net.Conn
	br    *bufio.Reader
	first Reply // the answer to "GET /" that tells which worker holds it
}

// dialPinned connects to addr and asks "GET /" on the new connection.
func dialPinned(addr string) (*pinnedConn, error) {
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return nil, err
	}
	c := &pinnedConn{conn: conn, br: bufio.NewReader(conn)}
	if err := c.send("/"); err != nil {
		conn.Close()
		return nil, err
	}
	if c.first, err = c.receive(); err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

func (c *pinnedConn) send(path string) error {
	c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err := fmt.Fprintf(c.conn, "GET %s HTTP/1.1\r\nHost: test\r\n\r\n", path)
	return err
}

// receive reads one answer, waiting up to 10s.
func (c *pinnedConn) receive() (Reply, error) {
	c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		return Reply{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return Reply{}, err
	}
	if resp.StatusCode != 200 {
		return Reply{}, fmt.Errorf("status %d %q", resp.StatusCode, b)
	}
	return parseReply(resp.StatusCode, string(b)), nil
}

// startLoadUnix is startLoad over the unix socket at path.
func startLoadUnix(t *testing.T, path string) *loadgen.Run {
	t.Helper()
	return startLoadVia(t, "http://unix/", path)
}

// noFailuresSoFar fails the test if the load has seen a failed request.
func noFailuresSoFar(t *testing.T, load *loadgen.Run, when string) {
	t.Helper()
	if s := load.Snapshot(); s.Failures != 0 {
		t.Errorf("%s: %d of %d requests failed: %v %q", when, s.Failures, s.Requests, s.FailuresByKind, s.FirstErrors)
	}
}

// logged waits up to d for an event of primary pid with msg from index
// from on, that also satisfies pred (if not nil).
func (p *Primary) logged(from int, d time.Duration, pid int, msg string, pred func(Event) bool) (Event, bool) {
	return p.Log.Wait(from, d, func(e Event) bool {
		return e.Msg == msg && e.Int0("primary") == pid && (pred == nil || pred(e))
	})
}

// mustLog is logged, failing the test without the event.
func (p *Primary) mustLog(from int, d time.Duration, pid int, msg string, pred func(Event) bool) Event {
	p.t.Helper()
	ev, ok := p.logged(from, d, pid, msg, pred)
	if !ok {
		p.t.Fatalf("primary %d logged no %q within %s\n%s", pid, msg, d, p.Tail(80))
	}
	return ev
}

// waitSuccessor waits until the pid file names a live primary of this test
// other than old, and returns it.
func (p *Primary) waitSuccessor(old int, d time.Duration) int {
	p.t.Helper()
	end := time.Now().Add(d)
	for {
		pid := p.PIDFromFile()
		if pid > 0 && pid != old && alive(pid) && ours(pid, p.Mark, p.Dir) {
			return pid
		}
		if time.Now().After(end) {
			p.t.Fatalf("pid file holds %d %s after the hand-over, want a new live primary", pid, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitSettled waits until the only processes of the test are primary and
// exactly Workers processes below it (retired workers have drained), and
// returns those workers. It fails the test otherwise.
func (p *Primary) waitSettled(primary int, d time.Duration) []int {
	p.t.Helper()
	end := time.Now().Add(d)
	for {
		desc := descendants(primary)
		want := append([]int{primary}, desc...)
		var stray []int
		for _, pid := range markedPIDs(p.Mark) {
			if !slices.Contains(want, pid) {
				stray = append(stray, pid)
			}
		}
		if alive(primary) && len(desc) == p.Workers && len(stray) == 0 {
			return desc
		}
		if time.Now().After(end) {
			p.t.Fatalf("after %s: primary %d (alive=%v) has descendants %v, want %d workers; other processes of the test: %v\n%s",
				d, primary, alive(primary), desc, p.Workers, stray, p.Tail(60))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// answers asks base n times, each on a new connection through c, and fails
// the test on any error or non-200 answer.
func answers(t *testing.T, c *http.Client, base string, n int) []Reply {
	t.Helper()
	var out []Reply
	for i := 0; i < n; i++ {
		status, body, err := get(c, base)
		if err != nil || status != 200 {
			t.Fatalf("GET %s: status %d body %q err %v", base, status, body, err)
		}
		out = append(out, parseReply(status, body))
	}
	return out
}

// answersAll is answers, going on (up to 500 more, a little apart) until
// every one of slots has answered: on a loaded machine one worker may win
// every accept on the shared socket for a while.
func answersAll(t *testing.T, c *http.Client, base string, n, slots int) []Reply {
	t.Helper()
	out := answers(t, c, base, n)
	seen := map[int]bool{}
	for _, r := range out {
		seen[r.Slot] = true
	}
	for i := 0; i < 500 && len(seen) < slots; i++ {
		time.Sleep(5 * time.Millisecond)
		r := answers(t, c, base, 1)[0]
		seen[r.Slot] = true
		out = append(out, r)
	}
	return out
}

// checkServedBy checks that every answer in rs came from one of workers
// and that every slot answered.
func checkServedBy(t *testing.T, rs []Reply, workers []int, slots int) map[int]Reply {
	t.Helper()
	bySlot := map[int]Reply{}
	for _, r := range rs {
		if !slices.Contains(workers, r.PID) {
			t.Errorf("answer from pid %d, which is not one of the primary's workers %v: %q", r.PID, workers, r.Body)
		}
		bySlot[r.Slot] = r
	}
	if len(bySlot) != slots {
		t.Errorf("answers came from slots %v, want all %d", keysOf(bySlot), slots)
	}
	return bySlot
}

func keysOf(m map[int]Reply) []int {
	var out []int
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// shutdownAll sends SIGTERM to primary (the current one) and checks that
// it shuts down gracefully and leaves no process of the test and no pid
// file behind.
func (p *Primary) shutdownAll(primary int) {
	p.t.Helper()
	t := p.t
	mark := p.Log.Len()
	p.Signal(primary, syscall.SIGTERM)
	if left := waitGone([]int{primary}, 20*time.Second); len(left) > 0 {
		t.Fatalf("primary %d still running 20s after SIGTERM\n%s", primary, p.Tail(40))
	}
	if primary == p.PID {
		if st := p.WaitExit(5 * time.Second); st == nil || st.ExitCode() != 0 {
			t.Errorf("primary %d after SIGTERM: %v, want exit status 0", primary, st)
		}
	}
	if _, ok := p.logged(mark, 2*time.Second, primary, "shutdown finished", nil); !ok {
		t.Errorf("primary %d logged no \"shutdown finished\"\n%s", primary, p.Tail(40))
	}
	if left := waitGone(markedPIDs(p.Mark), 5*time.Second); len(left) > 0 {
		t.Errorf("processes of the test left after the shutdown: %v", left)
	}
	if _, err := os.Stat(p.PIDFile); !os.IsNotExist(err) {
		t.Errorf("pid file %s still there after the shutdown (%v): holds %d", p.PIDFile, err, p.PIDFromFile())
	}
}

// TestBrokenNewPrimary: a new handoff binary that cannot start makes the
// deploy abort before any worker is touched: the old primary logs
// "upgrade aborted", keeps the pid file and the old version, and no request
// fails. With a good binary back in place the next deploy hands over.
func TestBrokenNewPrimary(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{})
	old := p.PID
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	load := startLoad(t, p.URL())

	installFile(t, p.Bin, brokenHandoff)
	p.Install("v2")
	u := p.Deploy(30 * time.Second)
	if !u.Aborted() {
		t.Fatalf("generation %d with a broken handoff binary finished: %s", u.Gen, u.End.Raw)
	}
	if k := u.Started.Str("kind"); k != "primary" {
		t.Errorf("\"upgrade started\" kind %q, want \"primary\": %s", k, u.Started.Raw)
	}
	if pid := u.End.Int0("primary"); pid != old {
		t.Errorf("\"upgrade aborted\" logged by %d, want the old primary %d", pid, old)
	}
	if r := u.End.Str("reason"); !strings.Contains(r, "new primary") || !strings.Contains(r, "exit status 1") {
		t.Errorf("\"upgrade aborted\" reason %q, want it to name the new primary and its exit status 1", r)
	}
	if !slices.Contains(p.Log.Lines(), "broken") {
		t.Errorf("the broken binary's stderr line \"broken\" did not reach the primary's stderr")
	}
	for _, e := range p.Log.Events()[u.Started.Seq:] {
		if e.Msg == "worker spawned" || e.Msg == "worker retiring" || e.Msg == "taking over" {
			t.Errorf("a worker was touched by the aborted deploy: %s", e.Raw)
		}
	}
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	if p.Exited() {
		t.Fatalf("old primary exited: %v", p.state)
	}
	if got := p.PIDFromFile(); got != old {
		t.Errorf("pid file holds %d after the aborted upgrade, want %d", got, old)
	}
	p.waitSettled(old, 10*time.Second)
	noFailuresSoFar(t, load, "aborted upgrade")

	// A good binary again: the next deploy hands over and rolls v2.
	p.InstallHandoff()
	u = deployUnderLoad(t, p, load, "v2", "v2")
	if k := u.Started.Str("kind"); k != "primary" {
		t.Errorf("generation %d: kind %q, want \"primary\"", u.Gen, k)
	}
	successor := p.waitSuccessor(old, 30*time.Second)
	if st := p.WaitExit(30 * time.Second); st == nil {
		t.Errorf("old primary %d still running 30s after handing over", old)
	} else if st.ExitCode() != 0 {
		t.Errorf("old primary %d after handing over: %s, want exit status 0", old, st)
	}
	p.waitSettled(successor, 10*time.Second)
	checkLoad(t, load, "v2")
	events := p.Log.Events()
	checkPrimaryField(t, events, old, successor)
	checkInvariant(t, events, p.Workers)
	p.shutdownAll(successor)
}

// TestHandOverRollBack: the new primary rolls slot 0, then the new build
// crashes in slot 1; the old primary takes slot 0 back (the new primary
// retiring its worker only once the old one's replacement is ready) with
// its own pinned generation, logs the deploy rolled back, keeps the pid
// file and serves with its own workers only, the new primary exits, and
// no request fails. A good deploy then hands over.
func TestHandOverRollBack(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{})
	old := p.PID
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	load := startLoad(t, p.URL())

	p.InstallHandoff()
	p.Install("crashslot")
	mark := p.Log.Len()
	p.Signal(old, syscall.SIGHUP)
	started := p.mustLog(mark, 10*time.Second, old, "upgrade started", nil)
	gen := started.Int0("generation")
	if k := started.Str("kind"); k != "primary" {
		t.Errorf("kind %q, want \"primary\"", k)
	}
	tk, ok := p.Log.Wait(mark, 20*time.Second, isMsg("taking over"))
	if !ok {
		t.Fatalf("no new primary logged \"taking over\"\n%s", p.Tail(60))
	}
	newPID := tk.Int0("primary")
	rolled := p.mustLog(mark, 60*time.Second, old, "upgrade rolled back", func(e Event) bool { return e.Int0("generation") == gen })
	if r := rolled.Str("reason"); !strings.Contains(r, "new primary") {
		t.Errorf("old primary's \"upgrade rolled back\" reason %q, want it to name the new primary", r)
	}
	if n, to := rolled.Int0("slots"), rolled.Int0("to"); n != 1 || to != 1 {
		t.Errorf("old primary's \"upgrade rolled back\": slots %d to %d, want 1 slot back to generation 1: %s", n, to, rolled.Raw)
	}

	// The new primary's account: slot 1's worker crashed.
	na, ok := p.logged(mark, 0, newPID, "upgrade aborted", nil)
	if !ok {
		t.Errorf("new primary %d logged no \"upgrade aborted\"", newPID)
	} else {
		if s := na.Int0("slot"); s != 1 {
			t.Errorf("new primary's \"upgrade aborted\" slot %d, want 1: %s", s, na.Raw)
		}
		if s := na.Str("status"); s != "exit status 3" {
			t.Errorf("new primary's \"upgrade aborted\" status %q, want \"exit status 3\"", s)
		}
		if s := na.Str("stderr"); !strings.Contains(s, "crashing at start (mode=crashslot, worker=1)") {
			t.Errorf("new primary's \"upgrade aborted\" stderr %q", s)
		}
	}
	rb, ok := p.logged(mark, 0, old, "rolling back a failed hand-over", nil)
	if !ok {
		t.Fatalf("old primary logged no \"rolling back a failed hand-over\"\n%s", p.Tail(80))
	}
	if n := rb.Int0("new_primary"); n != newPID {
		t.Errorf("roll-back names new primary %d, want %d", n, newPID)
	}
	// The new primary's slot 0 worker was retired (handed back), not killed.
	var newWorkers []int
	for _, e := range p.Log.Events()[mark:] {
		if e.Msg == "worker spawned" && e.Int0("primary") == newPID {
			newWorkers = append(newWorkers, e.Int0("pid"))
		}
	}
	if len(newWorkers) != 2 {
		t.Errorf("new primary spawned workers %v, want 2 (slot 0, then the crashing slot 1)", newWorkers)
	}
	back := p.mustLog(rb.Seq, 0, old, "worker spawned", func(e Event) bool { return e.Int0("slot") == 0 })
	if g := back.Int0("generation"); g != 1 {
		t.Errorf("old primary's slot 0 worker after the roll-back has generation %d, want its own 1", g)
	}
	if len(newWorkers) > 0 {
		ret := p.mustLog(mark, 10*time.Second, newPID, "worker retiring", func(e Event) bool { return e.Int0("pid") == newWorkers[0] })
		if r := ret.Str("reason"); r != "handed over" {
			t.Errorf("new primary's slot 0 worker retired with reason %q, want \"handed over\"", r)
		}
		if ready, ok := p.logged(back.Seq, 0, old, "worker ready", func(e Event) bool { return e.Int0("pid") == back.Int0("pid") }); !ok || ret.Seq < ready.Seq {
			t.Errorf("new primary retired its slot 0 worker before the old primary's replacement was ready")
		}
		if ex, ok := p.logged(ret.Seq, 10*time.Second, newPID, "worker exited", func(e Event) bool { return e.Int0("pid") == newWorkers[0] }); !ok {
			t.Errorf("new primary's slot 0 worker %d never exited", newWorkers[0])
		} else if s := ex.Str("status"); s != "exit status 0" {
			t.Errorf("new primary's slot 0 worker ended with %q, want a drain (exit status 0)", s)
		}
	}

	if left := waitGone([]int{newPID}, 15*time.Second); len(left) > 0 {
		t.Fatalf("new primary %d still running after the roll-back\n%s", newPID, p.Tail(60))
	}
	if p.Exited() {
		t.Fatalf("old primary exited: %v", p.state)
	}
	if got := p.PIDFromFile(); got != old {
		t.Errorf("pid file holds %d after the roll-back, want the old primary %d", got, old)
	}
	workers := p.waitSettled(old, 15*time.Second)
	bySlot := checkServedBy(t, answersAll(t, freshClient(2*time.Second), p.URL(), 60, p.Workers), workers, p.Workers)
	for slot, r := range bySlot {
		if r.Gen != 1 {
			t.Errorf("slot %d answers %q after the roll-back, want the old primary's generation 1", slot, r.Body)
		}
	}
	// Slot 1 never changed. Slot 0 was relaunched with the old primary's
	// generation, pinned: v1, although the command's path holds the new
	// build now.
	for slot, r := range bySlot {
		if r.Version != "v1" {
			t.Errorf("slot %d answers %q after the roll-back, want v1", slot, r.Body)
		}
	}
	noFailuresSoFar(t, load, "rolled-back hand-over")
	checkInvariant(t, p.Log.Events(), p.Workers)

	// A good build: the hand-over completes.
	u := deployUnderLoad(t, p, load, "v3", "v3")
	if k := u.Started.Str("kind"); k != "primary" {
		t.Errorf("generation %d: kind %q, want \"primary\"", u.Gen, k)
	}
	successor := p.waitSuccessor(old, 30*time.Second)
	if st := p.WaitExit(30 * time.Second); st == nil || st.ExitCode() != 0 {
		t.Errorf("old primary after handing over: %v, want exit status 0", st)
	}
	p.waitSettled(successor, 10*time.Second)
	res := checkLoad(t, load, "v3")
	if res.Versions["vcrashslot"] == 0 && res.Versions["v1"] == 0 {
		t.Errorf("no answer from before the good deploy: %v", res.Versions)
	}
	events := p.Log.Events()
	checkPrimaryField(t, events, old, newPID, successor)
	checkInvariant(t, events, p.Workers)
	p.shutdownAll(successor)
}

// checkExe checks that every worker runs want.
func checkExe(t *testing.T, workers []int, want string) {
	t.Helper()
	for _, pid := range workers {
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if err != nil || exe != want {
			t.Errorf("worker %d runs %q (%v), want %s", pid, exe, err, want)
		}
	}
}

// TestSymlinkDeploy: COMMAND is DIR/current, a symlink to
// releases/N/server; switching it and sending SIGHUP deploys that release,
// switching back deploys the old one again, by the same primary and by a
// new one.
func TestSymlinkDeploy(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{Command: "$DIR/current", Prepare: func(dir string) {
		for _, r := range []struct{ n, variant string }{{"1", "v1"}, {"2", "v2"}} {
			if err := os.MkdirAll(filepath.Join(dir, "releases", r.n), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := copyFile(servers[r.variant], filepath.Join(dir, "releases", r.n, "server"), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		switchSymlink(t, filepath.Join(dir, "current"), "releases/1/server")
	}})
	old := p.PID
	link := filepath.Join(p.Dir, "current")
	release := func(n string) string { return filepath.Join(p.Dir, "releases", n, "server") }
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	checkExe(t, p.waitSettled(old, 10*time.Second), release("1"))
	load := startLoad(t, p.URL())

	deploy := func(n, version string, newPrimary bool) int {
		t.Helper()
		switchSymlink(t, link, "releases/"+n+"/server")
		if newPrimary {
			p.InstallHandoff()
		}
		cur := p.Current()
		u := p.DeployOK(30 * time.Second)
		kind := map[bool]string{false: "workers", true: "primary"}[newPrimary]
		if k := u.Started.Str("kind"); k != kind {
			t.Errorf("generation %d: kind %q, want %q", u.Gen, k, kind)
		}
		primary := cur
		if newPrimary {
			primary = p.waitSuccessor(cur, 30*time.Second)
		}
		spawned := 0
		for _, e := range p.Log.Events()[u.Started.Seq:] {
			if e.Msg == "worker spawned" && e.Int0("generation") == u.Gen {
				spawned++
				if pid := e.Int0("primary"); pid != primary {
					t.Errorf("generation %d worker spawned by %d, want %d", u.Gen, pid, primary)
				}
			}
		}
		if spawned != p.Workers {
			t.Errorf("generation %d: %d workers spawned, want %d", u.Gen, spawned, p.Workers)
		}
		p.WaitServing(p.URL(), version, 20*time.Second)
		workers := p.waitSettled(primary, 10*time.Second)
		checkExe(t, workers, release(n))
		checkServedBy(t, answersAll(t, freshClient(2*time.Second), p.URL(), 40, p.Workers), workers, p.Workers)
		noFailuresSoFar(t, load, "deploy of release "+n)
		return primary
	}
	deploy("2", "v2", false)
	deploy("1", "v1", false)
	successor := deploy("2", "v2", true)
	if st := p.WaitExit(30 * time.Second); st == nil || st.ExitCode() != 0 {
		t.Errorf("old primary after handing over: %v, want exit status 0", st)
	}
	// The new primary resolves COMMAND anew too.
	deploy("1", "v1", false)
	checkLoad(t, load, "v1")
	events := p.Log.Events()
	checkPrimaryField(t, events, old, successor)
	checkInvariant(t, events, p.Workers)
	p.shutdownAll(successor)
}

// TestShutdownDuringHandOver: SIGTERM to the old primary half-way through
// a hand-over (slot 0 already the new primary's) shuts everything down
// gracefully: the old primary exits 0 in bounded time, the new primary
// and every worker are gone, requests in flight are answered, and the pid
// file is removed.
func TestShutdownDuringHandOver(t *testing.T) {
	t.Parallel()
	shutdownDuringHandOver(t, oldKernel{})
}

// TestShutdownDuringHandOverOldKernel: the same on the oldest kernel
// handoff supports (Linux 4.18: the old primary has no pidfd for the new
// one, and passes the TERM on by pid).
func TestShutdownDuringHandOverOldKernel(t *testing.T) {
	t.Parallel()
	shutdownDuringHandOver(t, oldKernelWrap(t))
}

func shutdownDuringHandOver(t *testing.T, kernel oldKernel) {
	p := StartPrimary(t, Options{Args: []string{"--ready-after", "1s"}, Wrap: kernel.Wrap, Env: kernel.Env})
	old := p.PID
	addr := p.Addr()
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	load := startLoad(t, p.URL())

	p.InstallHandoff()
	p.Install("slowready")
	mark := p.Log.Len()
	p.Signal(old, syscall.SIGHUP)
	started := p.mustLog(mark, 10*time.Second, old, "upgrade started", nil)
	gen := started.Int0("generation")
	tk, ok := p.Log.Wait(mark, 20*time.Second, isMsg("taking over"))
	if !ok {
		t.Fatalf("no new primary logged \"taking over\"\n%s", p.Tail(60))
	}
	newPID := tk.Int0("primary")
	// Half-way: slot 0 handed over, slot 1's new worker not ready yet.
	p.mustLog(mark, 20*time.Second, old, "worker retiring", func(e Event) bool { return e.Str("reason") == "handed over" })
	p.mustLog(mark, 5*time.Second, newPID, "upgrade step", func(e Event) bool { return e.Int0("step") == 2 })
	if ev, ok := p.Log.Wait(mark, 0, isMsg("upgrade finished", "primary ready")); ok {
		t.Fatalf("the hand-over ended before SIGTERM could be sent: %s", ev.Raw)
	}
	procs := append(descendants(old), old)
	noFailuresSoFar(t, load, "before SIGTERM")

	// Keep-alive connections held by the new primary's workers, each with
	// a slow request in flight when the SIGTERM comes.
	var newWorkers []int
	for _, e := range p.Log.Events()[mark:] {
		if e.Msg == "worker spawned" && e.Int0("primary") == newPID {
			newWorkers = append(newWorkers, e.Int0("pid"))
		}
	}
	var pinned []*pinnedConn
	for i := 0; i < 60 && len(pinned) < 3; i++ {
		c, err := dialPinned(addr)
		if err != nil {
			t.Fatalf("dial %s: %v", addr, err)
		}
		if slices.Contains(newWorkers, c.first.PID) {
			t.Cleanup(func() { c.conn.Close() })
			pinned = append(pinned, c)
		} else {
			c.conn.Close()
		}
	}
	if len(pinned) == 0 {
		t.Fatalf("no connection of 60 was accepted by the new primary's workers %v", newWorkers)
	}
	for _, c := range pinned {
		if err := c.send("/slow?ms=700"); err != nil {
			t.Fatal(err)
		}
		t.Logf("slow request on a connection of the new primary's worker %d", c.first.PID)
	}
	time.Sleep(100 * time.Millisecond)

	term := time.Now()
	p.Signal(old, syscall.SIGTERM)
	// No new request from here on; those in flight must be answered.
	res := load.Stop()
	t.Logf("load: %s", res)
	if res.Failures != 0 {
		t.Errorf("%d of %d requests failed: %v %q", res.Failures, res.Requests, res.FailuresByKind, res.FirstErrors)
	}
	for _, c := range pinned {
		r, err := c.receive()
		if err != nil {
			t.Errorf("slow request in flight at SIGTERM on the new primary's worker %d: %v", c.first.PID, err)
		} else if r.PID != c.first.PID || r.Version != "vslow" {
			t.Errorf("slow request on worker %d answered %q", c.first.PID, r.Body)
		}
	}
	st := p.WaitExit(20 * time.Second)
	if st == nil {
		t.Fatalf("old primary still running 20s after SIGTERM\n%s", p.Tail(60))
	}
	t.Logf("old primary exited %s after SIGTERM: %s", time.Since(term).Round(time.Millisecond), st)
	if st.ExitCode() != 0 {
		t.Errorf("old primary: %s, want exit status 0", st)
	}
	// The new primary drained its workers rather than being killed.
	if _, ok := p.logged(mark, 2*time.Second, newPID, "shutdown finished", nil); !ok {
		t.Errorf("new primary %d logged no \"shutdown finished\"", newPID)
	}
	if _, ok := p.logged(mark, 2*time.Second, old, "upgrade aborted", func(e Event) bool { return e.Int0("generation") == gen }); !ok {
		t.Errorf("old primary logged no \"upgrade aborted\" for generation %d", gen)
	}
	if _, ok := p.logged(mark, 2*time.Second, old, "shutdown finished", nil); !ok {
		t.Errorf("old primary logged no \"shutdown finished\"")
	}
	if left := waitGone([]int{newPID}, 5*time.Second); len(left) > 0 {
		t.Errorf("new primary %d still running after the old one shut down", newPID)
	}
	if left := waitGone(append(procs, markedPIDs(p.Mark)...), 5*time.Second); len(left) > 0 {
		t.Errorf("processes left after the shutdown: %v", left)
	}
	if _, err := os.Stat(p.PIDFile); !os.IsNotExist(err) {
		t.Errorf("pid file still there after the shutdown: holds %d", p.PIDFromFile())
	}
	if err := waitRefused(addr, 3*time.Second); err != nil {
		t.Error(err)
	}
}

// checkSocketFile fails the test unless path is a socket file.
func checkSocketFile(t *testing.T, path, when string) {
	t.Helper()
	if fi, err := os.Lstat(path); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("%s: socket file %s: %v %v", when, path, fi, err)
	}
}

// TestUnixSocketHandOver: a unix-socket listener is served across failed
// hand-overs (the new primary rolls back and exits) and a good one; the
// socket file stays after the new primaries and then the old primary have
// exited, and is removed by the final shutdown.
func TestUnixSocketHandOver(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{Listen: []string{"unix:$DIR/app.sock"}})
	old := p.PID
	sock := filepath.Join(p.Dir, "app.sock")
	c := unixClient(sock, 2*time.Second)
	const base = "http://unix/"
	p.WaitServingVia(c, base, "v1", 10*time.Second)
	load := startLoadUnix(t, sock)

	// Three times, as a failed new primary's exit races with what it does
	// on the way out.
	p.InstallHandoff()
	p.Install("crashslot")
	var failed []int
	for i := 0; i < 3; i++ {
		mark := p.Log.Len()
		p.Signal(old, syscall.SIGHUP)
		tk, ok := p.Log.Wait(mark, 20*time.Second, isMsg("taking over"))
		if !ok {
			t.Fatalf("no new primary logged \"taking over\"\n%s", p.Tail(60))
		}
		failed = append(failed, tk.Int0("primary"))
		// Rolled back when the new primary had taken slot 0 over (always,
		// unless the crash came first).
		if _, ok := p.Log.Wait(mark, 30*time.Second, func(e Event) bool {
			return e.Int0("primary") == old && (e.Msg == "upgrade aborted" || e.Msg == "upgrade rolled back")
		}); !ok {
			t.Fatalf("old primary logged no end of the deploy\n%s", p.Tail(60))
		}
		if left := waitGone([]int{tk.Int0("primary")}, 10*time.Second); len(left) > 0 {
			t.Fatalf("failed new primary %d still running", left[0])
		}
		checkSocketFile(t, sock, "after a failed hand-over")
		workers := p.waitSettled(old, 10*time.Second)
		checkServedBy(t, answersAll(t, c, base, 40, p.Workers), workers, p.Workers)
		noFailuresSoFar(t, load, "failed hand-over")
	}
	if got := p.PIDFromFile(); got != old {
		t.Errorf("pid file holds %d after the failed hand-overs, want %d", got, old)
	}

	p.Install("v2")
	u := p.DeployOK(30 * time.Second)
	if k := u.Started.Str("kind"); k != "primary" {
		t.Errorf("generation %d: kind %q, want \"primary\"", u.Gen, k)
	}
	p.WaitServingVia(c, base, "v2", 20*time.Second)
	successor := p.waitSuccessor(old, 30*time.Second)
	if st := p.WaitExit(30 * time.Second); st == nil || st.ExitCode() != 0 {
		t.Fatalf("old primary after handing over: %v, want exit status 0", st)
	}
	checkSocketFile(t, sock, "after the old primary exited")
	workers := p.waitSettled(successor, 10*time.Second)
	checkServedBy(t, answersAll(t, c, base, 40, p.Workers), workers, p.Workers)
	p.WaitServingVia(c, base, "v2", 10*time.Second)
	checkLoad(t, load, "v2")
	events := p.Log.Events()
	checkPrimaryField(t, events, append(failed, old, successor)...)
	checkInvariant(t, events, p.Workers)

	p.shutdownAll(successor)
	end := time.Now().Add(3 * time.Second)
	for {
		_, err := os.Lstat(sock)
		if os.IsNotExist(err) {
			break
		}
		if time.Now().After(end) {
			t.Errorf("socket file %s still there 3s after the shutdown (%v)", sock, err)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
}
