//go:build linux

package integration

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/internal/loadgen"
	"github.com/handoff-dev/handoff/runtime"
)

// TestControlRollbackAndGenerations: status (text and --json) names the
// current generation and the file it runs; a rollback with no previous
// generation is refused with one line and exit 1, logged, and changes
// nothing; after a reload the current generation is the new one.
func TestControlRollbackAndGenerations(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{Workers: 1})
	server, err := filepath.EvalSymlinks(p.Server)
	if err != nil {
		t.Fatal(err)
	}

	r := p.CtlOK("status", "--json")
	var raw struct {
		Generations map[string]json.RawMessage `json:"generations"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &raw); err != nil {
		t.Fatal(err)
	}
	if string(raw.Generations["previous"]) != "null" || len(raw.Generations["current"]) == 0 {
		t.Errorf("status --json generations: %s", r.stdout)
	}
	st := p.Status()
	if c := st.Generations.Current; c == nil || c.Generation != 1 || c.Path != server || st.Generations.Previous != nil {
		t.Errorf("generations %+v, want current 1 at %s and no previous", st.Generations, server)
	}
	r = p.CtlOK("status")
	if !strings.Contains(r.stdout, "current  generation 1: "+server+", ") || !strings.Contains(r.stdout, ", sha256 ") ||
		!strings.Contains(r.stdout, "previous none") {
		t.Errorf("status table:\n%s", r.stdout)
	}

	mark := p.Log.Len()
	r = p.Ctl("rollback")
	if r.code != 1 || r.stdout != "" {
		t.Errorf("rollback without a previous generation: %s, want exit 1", r)
	}
	oneLine(t, "rollback without a previous generation", r.stderr, "rollback refused: no previous generation to roll back to")
	if _, ok := p.Log.Wait(mark, 5*time.Second, isMsg("rollback refused")); !ok {
		t.Errorf("no \"rollback refused\" event\n%s", p.Tail(20))
	}
	if e, ok := p.Log.Wait(mark, time.Second, isMsg("control request")); !ok || e.Str("op") != "rollback" {
		t.Errorf("control request event: %v", e)
	}
	if n := len(p.Log.Filter("upgrade started")); n != 0 {
		t.Errorf("a refused rollback started %d upgrades", n)
	}
	p.WaitServing(p.URL(), "v1", 10*time.Second)

	p.Install("v2")
	r = p.CtlOK("reload")
	if !strings.Contains(r.stdout, "done: generation 2") {
		t.Errorf("reload: %s", r)
	}
	if c := p.Status().Generations.Current; c == nil || c.Generation != 2 || c.Path != server {
		t.Errorf("after the reload: current %+v", c)
	}
}

// realServer is DIR/server with the directory's symlinks resolved, as the
// kernel names the file a worker runs.
func (p *Primary) realServer() string {
	p.t.Helper()
	dir, err := filepath.EvalSymlinks(p.Dir)
	if err != nil {
		p.t.Fatal(err)
	}
	return filepath.Join(dir, "server")
}

// fileSHA256 is the hex SHA-256 of the file at path.
func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// checkGenerations checks status's generations: the current one's number
// and file (by its SHA-256), the one it rolled back to (0: none), and the
// previous one's number and file (prevGen 0: none).
func checkGenerations(t *testing.T, st runtime.Status, gen int, sha string, rollbackOf, prevGen int, prevSHA string) {
	t.Helper()
	gs := st.Generations
	if c := gs.Current; c == nil || c.Generation != gen || c.SHA256 != sha || c.RollbackOf != rollbackOf {
		t.Errorf("current generation %+v, want %d running sha256 %.12s (rollback of %d)", c, gen, sha, rollbackOf)
	}
	switch pr := gs.Previous; {
	case prevGen == 0 && pr != nil:
		t.Errorf("previous generation %+v, want none", pr)
	case prevGen != 0 && (pr == nil || pr.Generation != prevGen || pr.SHA256 != prevSHA):
		t.Errorf("previous generation %+v, want %d running sha256 %.12s", pr, prevGen, prevSHA)
	}
}

// workersOfGeneration waits until status shows exactly the primary's
// workers, all ready and all of generation gen, and returns their pids.
func (p *Primary) workersOfGeneration(gen int, d time.Duration) []int {
	p.t.Helper()
	st := p.waitStatus(fmt.Sprintf("every worker of generation %d", gen), d, func(st runtime.Status) bool {
		if !exactly(p.Workers)(st) {
			return false
		}
		for _, w := range st.Workers {
			if w.Generation != gen {
				return false
			}
		}
		return true
	})
	var pids []int
	for _, w := range st.Workers {
		pids = append(pids, w.Pid)
	}
	return pids
}

// serveOnly loads the primary for a second, failing the test on a failed
// request or an answer from another version than version.
func serveOnly(t *testing.T, p *Primary, version, when string) {
	t.Helper()
	res := loadgen.Start(context.Background(), loadgen.Config{URL: p.URL(), NewConn: 4, KeepAlive: 4,
		Duration: time.Second, MaxRequests: 2000, Timeout: 5 * time.Second, Pause: 2 * time.Millisecond}).Wait()
	if res.Failures != 0 || res.Versions[version] != res.Requests {
		t.Errorf("%s: %s, want every request answered by %s", when, res, version)
	}
}

// TestRestartAfterRefusedDeployRunsThePinnedGeneration: a deploy refused
// at start leaves the crashing build at the command's path; an old worker
// killed afterwards is replaced by one of the old generation, running the
// old file (gone from the path), and every slot serves the old version.
func TestRestartAfterRefusedDeployRunsThePinnedGeneration(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{Workers: 2, Flags: []string{"--ready-timeout", "5s"}})
	p.WaitServing(p.URL(), "v1", 10*time.Second)

	load := startLoad(t, p.URL())
	p.Install("crash")
	u := p.Deploy(30 * time.Second)
	if !u.Aborted() || u.RolledBack() {
		t.Fatalf("the crash build: %s, want \"upgrade aborted\" (nothing replaced)", u.End.Raw)
	}
	checkLoad(t, load, "v1")

	old := p.workersOfGeneration(1, 10*time.Second)
	victim := old[0]
	st := p.Status()
	slot := -1
	for _, w := range st.Workers {
		if w.Pid == victim {
			slot = w.Slot
		}
	}
	mark := p.Log.Len()
	if err := signalOurs(victim, syscall.SIGKILL, p.Mark, p.Dir); err != nil {
		t.Fatal(err)
	}
	sp, ok := p.Log.Wait(mark, 10*time.Second, func(e Event) bool { return e.Msg == "worker spawned" && e.Int0("slot") == slot })
	if !ok {
		t.Fatalf("no replacement of slot %d\n%s", slot, p.Tail(30))
	}
	if g := sp.Int0("generation"); g != 1 {
		t.Errorf("the replacement runs generation %d, want 1: %s", g, sp.Raw)
	}
	p.WaitServing(p.URL(), "v1", 20*time.Second)
	workers := p.workersOfGeneration(1, 10*time.Second)
	// The file v1 was run from has been replaced at the path by the crash
	// build: the replacement runs the pinned inode.
	checkExe(t, workers, p.realServer()+" (deleted)")
	for _, e := range p.Log.Events()[mark:] {
		if e.Msg == "worker exited" && e.Int0("pid") != victim {
			t.Errorf("a worker exited after the replacement: %s", e.Raw)
		}
	}
	serveOnly(t, p, "v1", "after the replacement")
	if p.Exited() {
		t.Errorf("primary exited")
	}
	checkInvariant(t, p.Log.Events(), p.Workers)
}

// TestProbationRollsBackACrashAfterReady: a version that exits 4 1.5s
// after it is ready (answering what it accepted first, so that what fails
// is handoff's doing), deployed under load with `handoff reload` and the
// default --min-uptime: the reload reports the roll-back (exit 1, one
// line), every slot serves the old version again, no request fails, the
// bad build is not started again, the primary lives, and the outcome is
// rolled_back in the log, the metrics and systemd's status.
func TestProbationRollsBackACrashAfterReady(t *testing.T) {
	t.Parallel()
	sd, notify := newFakeSystemd(t)
	p := StartPrimary(t, Options{Workers: 2, MinUptime: "5s", Args: []string{"--crash-after", "1500ms", "--crash-drain"},
		Flags: []string{"--metrics", "127.0.0.1:0"}, Env: []string{"NOTIFY_SOCKET=" + notify}})
	base := p.MetricsURL()
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	load := startLoad(t, p.URL())

	p.Install("crashlater")
	mark := p.Log.Len()
	r := p.Ctl("reload")
	if r.code != 1 || r.stdout != "" {
		t.Errorf("reload of a build that crashes after ready: %s, want exit 1", r)
	}
	oneLine(t, "reload", r.stderr, "handoff: reload rolled back: worker ", "after it was ready", "exit status 4",
		"crashing after 1.5s", "; generation 1 serving")
	u := p.AwaitUpgrade(mark, 5*time.Second)
	if !u.RolledBack() {
		t.Fatalf("generation %d: %s, want \"upgrade rolled back\"", u.Gen, u.End.Raw)
	}
	if to, slots := u.End.Int0("to"), u.End.Int0("slots"); to != 1 || slots != 2 {
		t.Errorf("\"upgrade rolled back\" to %d, slots %d; want 1, 2: %s", to, slots, u.End.Raw)
	}
	if d, ok := u.End.Duration("ready_for"); !ok || d < time.Second || d > 5*time.Second {
		t.Errorf("\"upgrade rolled back\" ready_for %v, want about 1.5s: %s", d, u.End.Raw)
	}
	if !strings.Contains(u.End.Str("stderr"), "crashing after") || u.End.Str("status") != "exit status 4" {
		t.Errorf("\"upgrade rolled back\" without the worker's status and stderr: %s", u.End.Raw)
	}
	if _, ok := p.Log.Wait(mark, 0, isMsg("worker failed probation")); !ok {
		t.Errorf("no \"worker failed probation\"")
	}

	p.WaitServing(p.URL(), "v1", 20*time.Second)
	p.workersOfGeneration(1, 10*time.Second)
	// The failed build is started no more: no worker of its generation
	// after the roll-back (the old ones' restarts run generation 1).
	if ev, ok := p.Log.Wait(u.End.Seq, 2*time.Second, func(e Event) bool {
		return e.Msg == "worker spawned" && e.Int0("generation") == u.Gen
	}); ok {
		t.Errorf("the failed build was started after the roll-back: %s", ev.Raw)
	}
	res := load.Stop()
	t.Logf("load through the deploy and its roll-back: %s", res)
	if res.Versions["vcrashlater"] == 0 || res.Versions["v1"] == 0 {
		t.Errorf("versions served %v, want both", res.Versions)
	}
	if res.Failures != 0 {
		t.Errorf("%d of %d requests failed through the deploy and its roll-back: %v %q", res.Failures, res.Requests, res.FailuresByKind, res.FirstErrors)
	}
	serveOnly(t, p, "v1", "after the roll-back")
	if p.Exited() {
		t.Fatalf("primary exited: %v", p.state)
	}
	m := scrape(t, base)
	if m[`handoff_upgrades_total{kind="workers",outcome="rolled_back"}`] != 1 || m[`handoff_last_upgrade_successful`] != 0 ||
		m[`handoff_generation`] != 1 {
		t.Errorf("metrics after the roll-back: %v", pick(m, "handoff_upgrade", "handoff_last", "handoff_generation"))
	}
	i := sd.waitFor(t, 0, 5*time.Second, "RELOADING=1")
	i = sd.waitFor(t, i+1, 5*time.Second, "READY=1")
	if st := sd.all()[i].fields["STATUS"]; !strings.HasPrefix(st, "serving generation 1; generation 2 rolled back: worker ") {
		t.Errorf("systemd status after the roll-back: %q", st)
	}
	checkInvariant(t, p.Log.Events(), p.Workers)
}

// TestRollbackToAFileGoneFromDisk: after a good deploy, the previous
// version's file is gone from disk and a new build is at the command's
// path; `handoff rollback` serves the previous version everywhere, under
// load with no failed request; a second rollback goes forward again; a
// SIGHUP then deploys the new file.
func TestRollbackToAFileGoneFromDisk(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{Workers: 2})
	v1, v2, v3 := fileSHA256(t, servers["v1"]), fileSHA256(t, servers["v2"]), fileSHA256(t, servers["v3"])
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	load := startLoad(t, p.URL())
	deployUnderLoad(t, p, load, "v2", "v2")
	checkGenerations(t, p.Status(), 2, v2, 0, 1, v1)

	// v1's file went when v2 was renamed over it; v2's goes now, and a
	// new build takes the path.
	if err := os.Remove(p.Server); err != nil {
		t.Fatal(err)
	}
	p.Install("v3")

	mark := p.Log.Len()
	r := p.CtlOK("rollback")
	if want := fmt.Sprintf("rollback done: generation 3 serving (primary %d)\n", p.PID); r.stdout != want {
		t.Errorf("rollback: %s, want stdout %q", r, want)
	}
	st, ok := p.Log.Wait(mark, 0, isMsg("upgrade started"))
	if !ok || st.Str("kind") != "rollback" || st.Int0("rollback_of") != 1 {
		t.Errorf("\"upgrade started\" of the rollback: %s", st.Raw)
	}
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	noFailuresSoFar(t, load, "rollback")
	checkGenerations(t, p.Status(), 3, v1, 1, 2, v2)
	checkExe(t, p.workersOfGeneration(3, 10*time.Second), p.realServer()+" (deleted)")

	p.CtlOK("rollback")
	p.WaitServing(p.URL(), "v2", 10*time.Second)
	noFailuresSoFar(t, load, "second rollback")
	checkGenerations(t, p.Status(), 4, v2, 2, 3, v1)

	u := p.DeployOK(30 * time.Second)
	if u.Started.Str("kind") != "workers" {
		t.Errorf("the SIGHUP after the rollbacks: %s", u.Started.Raw)
	}
	p.WaitServing(p.URL(), "v3", 10*time.Second)
	checkGenerations(t, p.Status(), 5, v3, 0, 4, v2)
	// The primary holds the pins of the two generations it keeps (each
	// with its in-memory copy), no more.
	links, err := fdLinks(p.PID)
	if err != nil {
		t.Fatal(err)
	}
	copies := 0
	for _, l := range links {
		if strings.Contains(l, "handoff-pin:") {
			copies++
		}
	}
	if copies != 2 {
		t.Errorf("the primary holds %d pinned copies after 5 generations, want 2 (current and previous): %v", copies, links)
	}
	checkLoad(t, load, "v3")
	events := p.Log.Events()
	checkPrimaryField(t, events, p.PID)
	checkInvariant(t, events, p.Workers)
}

// TestRollbackAcrossHandOver: a deploy that replaces the handoff binary
// too hands over to a new primary, which keeps both generations (the
// pinned files cross with the listeners); `handoff rollback` through it
// serves the previous version, whose file is gone from disk, under load
// with no failed request.
func TestRollbackAcrossHandOver(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{Workers: 2})
	old := p.PID
	v1, v2 := fileSHA256(t, servers["v1"]), fileSHA256(t, servers["v2"])
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	load := startLoad(t, p.URL())

	p.InstallHandoff()
	u := deployUnderLoad(t, p, load, "v2", "v2")
	if k := u.Started.Str("kind"); k != "primary" {
		t.Fatalf("generation %d: kind %q, want \"primary\"", u.Gen, k)
	}
	successor := p.waitSuccessor(old, 30*time.Second)
	if st := p.WaitExit(30 * time.Second); st == nil || st.ExitCode() != 0 {
		t.Fatalf("old primary after handing over: %v", st)
	}
	checkGenerations(t, p.Status(), 2, v2, 0, 1, v1)

	r := p.CtlOK("rollback")
	if want := fmt.Sprintf("rollback done: generation 3 serving (primary %d)\n", successor); r.stdout != want {
		t.Errorf("rollback: %s, want stdout %q", r, want)
	}
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	checkGenerations(t, p.Status(), 3, v1, 1, 2, v2)
	checkExe(t, p.waitSettled(successor, 10*time.Second), p.realServer()+" (deleted)")
	checkLoad(t, load, "v1")
	events := p.Log.Events()
	checkPrimaryField(t, events, old, successor)
	checkInvariant(t, events, p.Workers)
	p.shutdownAll(successor)
}

// TestNewerDeployEndsProbation: a deploy asked for during another's
// probation starts at once and ends that probation; with nothing newer,
// `handoff reload` waits for the whole probation.
func TestNewerDeployEndsProbation(t *testing.T) {
	t.Parallel()
	const minUptime = 3 * time.Second
	p := StartPrimary(t, Options{Workers: 2, MinUptime: minUptime.String()})
	p.WaitServing(p.URL(), "v1", 10*time.Second)

	p.Install("v2")
	mark := p.Log.Len()
	p.Signal(p.PID, syscall.SIGHUP)
	// The second deploy is asked for once the first has pinned v2.
	if _, ok := p.Log.Wait(mark, 10*time.Second, isMsg("upgrade step")); !ok {
		t.Fatalf("no \"upgrade step\"\n%s", p.Tail(20))
	}
	p.Install("v3")
	asked := time.Now()
	p.Signal(p.PID, syscall.SIGHUP)
	first := p.AwaitUpgrade(mark, 10*time.Second)
	if first.Aborted() || first.End.Str("probation") != "ended by a newer deploy" {
		t.Errorf("the first deploy: %s, want finished with its probation ended by the newer one", first.End.Raw)
	}
	second, ok := p.Log.Wait(first.End.Seq, 10*time.Second, isMsg("upgrade started"))
	if !ok {
		t.Fatalf("no second deploy\n%s", p.Tail(20))
	}
	if took := time.Since(asked); took >= minUptime {
		t.Errorf("the newer deploy started %v after it was asked for, not before the first one's probation of %v was over", took, minUptime)
	}
	if u := p.AwaitUpgrade(second.Seq, 20*time.Second); u.Aborted() {
		t.Fatalf("the second deploy: %s", u.End.Raw)
	}
	p.WaitServing(p.URL(), "v3", 10*time.Second)
	if st := p.Status(); st.Generations.Previous == nil || st.Generations.Previous.Generation != 2 {
		t.Errorf("previous generation %+v, want the one the newer deploy replaced, 2", st.Generations.Previous)
	}

	p.Install("v4")
	start := time.Now()
	r := p.CtlOK("reload")
	if took := time.Since(start); took < minUptime {
		t.Errorf("reload returned after %v, before the probation of %v was over: %s", took, minUptime, r)
	}
	if !strings.Contains(r.stdout, "reload done: generation 4 serving") {
		t.Errorf("reload: %s", r)
	}
	// A deploy of the same file again (restarting the workers, e.g. for
	// a configuration) keeps the previous generation what a rollback
	// goes back to.
	v3, v4 := fileSHA256(t, servers["v3"]), fileSHA256(t, servers["v4"])
	checkGenerations(t, p.Status(), 4, v4, 0, 3, v3)
	p.CtlOK("reload")
	checkGenerations(t, p.Status(), 5, v4, 0, 3, v3)
	checkInvariant(t, p.Log.Events(), p.Workers)
}

// TestRollbackReleaseDirectories: an application whose code is not the
// executable handoff pins (an interpreter's script, a binary next to a
// launcher) pins its code with release directories: the command is a
// small script in each release that runs what is next to it, and
// `current -> releases/N` is switched by each deploy. A rollback runs the
// previous release's script, which runs that release's code.
func TestRollbackReleaseDirectories(t *testing.T) {
	t.Parallel()
	const start = "#!/bin/sh\nexec \"$(dirname \"$0\")/server\" \"$@\"\n"
	p := StartPrimary(t, Options{Command: "$DIR/current/start", Prepare: func(dir string) {
		for _, r := range []struct{ n, variant string }{{"1", "v1"}, {"2", "v2"}} {
			rel := filepath.Join(dir, "releases", r.n)
			if err := os.MkdirAll(rel, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := copyFile(servers[r.variant], filepath.Join(rel, "server"), 0o755); err != nil {
				t.Fatal(err)
			}
			writeBytes(t, filepath.Join(rel, "start"), []byte(start), 0o755)
		}
		switchSymlink(t, filepath.Join(dir, "current"), "releases/1")
	}})
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	load := startLoad(t, p.URL())

	switchSymlink(t, filepath.Join(p.Dir, "current"), "releases/2")
	p.DeployOK(30 * time.Second)
	p.WaitServing(p.URL(), "v2", 10*time.Second)
	st := p.Status()
	if c, pr := st.Generations.Current, st.Generations.Previous; c == nil || !strings.HasSuffix(c.Path, "/releases/2/start") ||
		pr == nil || !strings.HasSuffix(pr.Path, "/releases/1/start") {
		t.Errorf("generations %+v %+v, want the start scripts of releases 2 and 1", c, pr)
	}

	// current still points to release 2: the rollback runs release 1's
	// script, by its own path, and so release 1's code.
	r := p.CtlOK("rollback")
	if !strings.Contains(r.stdout, "rollback done: generation 3 serving") {
		t.Errorf("rollback: %s", r)
	}
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	release1, err := filepath.EvalSymlinks(filepath.Join(p.Dir, "releases", "1", "server"))
	if err != nil {
		t.Fatal(err)
	}
	checkExe(t, p.workersOfGeneration(3, 10*time.Second), release1)
	checkLoad(t, load, "v1")
	checkInvariant(t, p.Log.Events(), p.Workers)
}

// samples records every request of a load run (loadgen.Config.Observe).
type samples struct {
	mu  sync.Mutex
	all []loadgen.Sample
}

func (s *samples) add(x loadgen.Sample) {
	s.mu.Lock()
	s.all = append(s.all, x)
	s.mu.Unlock()
}

func (s *samples) list() []loadgen.Sample {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]loadgen.Sample(nil), s.all...)
}

// startNewConnLoad loads url with clients that open a new connection for
// every request (a keep-alive connection stays with the worker that
// accepted it, draining included), recording each request.
func startNewConnLoad(t *testing.T, url string) (*loadgen.Run, *samples) {
	t.Helper()
	rec := &samples{}
	r := loadgen.Start(context.Background(), loadgen.Config{URL: url, NewConn: 8, Duration: 2 * time.Minute,
		MaxRequests: 1_000_000, Timeout: 5 * time.Second, Pause: 2 * time.Millisecond, Observe: rec.add})
	t.Cleanup(func() { r.Stop() })
	waitRequests(t, r, 50, 10*time.Second)
	return r, rec
}

// oldAnswersAfter checks the requests begun after since: none failed, none
// was answered by another version than version, and some were answered
// by it. It returns when the last request that another version answered
// began (zero if none did), for the log.
func oldAnswersAfter(t *testing.T, rec *samples, since time.Time, version string) (last time.Time) {
	t.Helper()
	byVersion := map[string]int{}
	for _, s := range rec.list() {
		if s.Err == nil && s.Version != version && s.Begin.After(last) {
			last = s.Begin
		}
		if s.Begin.Before(since) {
			continue
		}
		if s.Err != nil {
			byVersion["failed"]++
		} else {
			byVersion[s.Version]++
		}
	}
	if byVersion[version] == 0 || len(byVersion) != 1 {
		t.Errorf("requests begun after %s took over: %v, want every one answered by %s", version, byVersion, version)
	}
	return last
}

// TestDeployOldVersionAnswersNoMore: a 2-worker deploy with the default
// --min-uptime, under new-connection load, on one shared socket
// (--balance shared): the last slot's old worker retires as soon as its
// replacement is ready (it has exited long before the deploy finishes,
// after the probation), so that once the new version has taken over the
// old one answers no more; no request fails.
func TestDeployOldVersionAnswersNoMore(t *testing.T) {
	t.Parallel()
	oldVersionAnswersNoMore(t, "shared", false)
}

// TestDeployOldVersionAnswersNoMoreSteered: the same with a socket per
// worker (the default balance where groups work) and no --standby: the
// last slot's old worker retires too, before the probation is over, so
// that no old worker is left to answer even an open connection.
func TestDeployOldVersionAnswersNoMoreSteered(t *testing.T) {
	t.Parallel()
	needGroups(t)
	oldVersionAnswersNoMore(t, "auto", false)
}

// TestDeployStandbyAtWeightZero: the same deploy with a socket per worker
// and --standby: the last slot's old worker stands by through the
// probation, alive, at weight 0: from the moment the new version has
// taken over, every new connection is answered by it and none by the old
// one; the standing worker exits only once the probation is over.
func TestDeployStandbyAtWeightZero(t *testing.T) {
	t.Parallel()
	needGroups(t)
	oldVersionAnswersNoMore(t, "auto", true)
}

func oldVersionAnswersNoMore(t *testing.T, balance string, standby bool) {
	t.Helper()
	// The time the old worker may take to stop accepting after the primary
	// logged its replacement ready: on one shared socket the stop signal's
	// way, on a loaded machine; steered, the steering change after the
	// log line. The probation (5s) is far longer.
	grace := 2 * time.Second
	if balance != "shared" {
		grace = 500 * time.Millisecond
	}
	flags := []string{"--balance", balance}
	if standby {
		flags = append(flags, "--standby")
	}
	p := StartPrimary(t, Options{Workers: 2, MinUptime: "5s", Flags: flags})
	steered := p.Status().Balance != "shared"
	if steered != (balance != "shared") {
		t.Fatalf("--balance %s: status says balance %v", balance, p.Status().Balance)
	}
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	old, ok := p.Log.Wait(0, 0, func(e Event) bool {
		return e.Msg == "worker ready" && e.Int0("generation") == 1 && e.Int0("slot") == 1
	})
	if !ok {
		t.Fatalf("no ready worker of slot 1")
	}
	load, rec := startNewConnLoad(t, p.URL())

	p.Install("v2")
	mark := p.Log.Len()
	p.Signal(p.PID, syscall.SIGHUP)
	ready, ok := p.Log.Wait(mark, 30*time.Second, func(e Event) bool {
		return e.Msg == "worker ready" && e.Int0("generation") == 2 && e.Int0("slot") == 1
	})
	if !ok {
		t.Fatalf("the last slot's new worker is not ready\n%s", p.Tail(30))
	}
	tookOver := time.Now()
	if standby {
		// Halfway through the probation the old worker still runs.
		time.Sleep(2 * time.Second)
		if !alive(old.Int0("pid")) {
			t.Errorf("slot 1's old worker (pid %d) is gone during the probation: it should stand by", old.Int0("pid"))
		}
	}
	u := p.AwaitUpgrade(mark, 30*time.Second)
	if u.Aborted() {
		t.Fatalf("deploy: %s", u.End.Raw)
	}
	if took := time.Since(tookOver); !standby && took < 3*time.Second {
		t.Errorf("the deploy finished %v after the last new worker was ready, before its probation of 5s", took)
	}
	res := load.Stop()
	t.Logf("load: %s", res)
	if res.Failures != 0 {
		t.Errorf("%d of %d requests failed: %v %q", res.Failures, res.Requests, res.FailuresByKind, res.FirstErrors)
	}
	exited, ok := p.Log.Wait(mark, 10*time.Second, func(e Event) bool { return e.Msg == "worker exited" && e.Int0("pid") == old.Int0("pid") })
	switch {
	case !standby && (!ok || exited.Seq > u.End.Seq):
		// Without a standby the last old worker was gone before the
		// probation was over.
		t.Errorf("slot 1's old worker (pid %d) exited after the deploy finished: it served through the probation", old.Int0("pid"))
	case standby && ok && exited.Seq < u.End.Seq:
		t.Errorf("slot 1's old worker (pid %d) exited before the deploy finished: it did not stand by", old.Int0("pid"))
	case standby && !ok:
		t.Errorf("slot 1's old worker (pid %d) did not exit after the deploy finished", old.Int0("pid"))
	}
	if e, ok := p.Log.Wait(mark, 0, isMsg("upgrade took over")); !ok || e.Seq < ready.Seq || e.Seq > u.End.Seq {
		t.Errorf("\"upgrade took over\" %v, want it between the last new worker's readiness and the end", e.Raw)
	}
	last := oldAnswersAfter(t, rec, tookOver.Add(grace), "v2")
	t.Logf("the last request v1 answered began %v after the last new worker (pid %d) was seen ready", last.Sub(tookOver).Round(time.Millisecond), ready.Int0("pid"))
	old1, all := 0, 0
	for _, s := range rec.list() {
		if s.Begin.After(tookOver) && s.Begin.Before(tookOver.Add(2*time.Second)) {
			all++
			if s.Version == "v1" {
				old1++
			}
		}
	}
	t.Logf("in the 2s after it: %d of %d new connections answered by v1", old1, all)
	checkInvariant(t, p.Log.Events(), p.Workers)
}

// TestProbationOneWorkerCrashRefilled: with --workers 1 on one shared
// socket (--balance shared) the old worker retires once the new one is
// ready; a new version that exits within its probation has the slot
// refilled with the old version at once (no restart backoff), and
// meanwhile the connections wait in the listening socket's queue, which
// the primary holds: under new-connection load no request fails, and the
// old version serves again.
func TestProbationOneWorkerCrashRefilled(t *testing.T) {
	t.Parallel()
	oneWorkerCrashRefilled(t, "shared")
}

// TestProbationOneWorkerCrashRefilledSteered: the same with a socket per
// worker and no --standby: the refill of the previous version takes the
// slot's socket, and what queued on it while the slot had no worker.
func TestProbationOneWorkerCrashRefilledSteered(t *testing.T) {
	t.Parallel()
	needGroups(t)
	oneWorkerCrashRefilled(t, "auto")
}

func oneWorkerCrashRefilled(t *testing.T, balance string) {
	t.Helper()
	p, failed, load := oneWorkerCrashAfterReady(t, balance)
	refill, ok := p.Log.Wait(failed.Seq, 0, func(e Event) bool { return e.Msg == "worker spawned" })
	if !ok || refill.Int0("generation") != 1 {
		t.Fatalf("after the failure: %v, want a worker of generation 1 spawned", refill.Raw)
	}
	for _, e := range p.Log.Events()[failed.Seq:refill.Seq] {
		if e.Msg == "worker restart scheduled" {
			t.Errorf("a restart with backoff before the refill: %s", e.Raw)
		}
	}
	oneWorkerServesAgain(t, p, load)
}

// TestProbationStandbyReinstated: the same with a socket per worker and
// --standby: the old worker stood by at weight 0, and when the new version exits within
// its probation it takes its slot back at once ("worker reinstated", no
// new worker spawned), steered to again: no request fails, and the old
// version serves again.
func TestProbationStandbyReinstated(t *testing.T) {
	t.Parallel()
	needGroups(t)
	p, failed, load := oneWorkerCrashAfterReady(t, "auto", "--standby")
	// Reinstated in the very step that saw the new worker exit, which the
	// log may show just before the failure.
	back, ok := p.Log.Wait(0, 5*time.Second, isMsg("worker reinstated"))
	if !ok || back.Int0("generation") != 1 {
		t.Fatalf("after the failure (%s): %v, want the old worker of generation 1 reinstated", failed.Raw, back.Raw)
	}
	oneWorkerServesAgain(t, p, load)
	if e, ok := p.Log.Wait(back.Seq, 0, isMsg("worker spawned")); ok {
		t.Errorf("a worker spawned after the reinstatement: %s", e.Raw)
	}
}

// oneWorkerCrashAfterReady deploys, to one worker under new-connection
// load with the given --balance, a version that exits 1s after it is
// ready, within its probation of 5s: the deploy is rolled back. It returns
// the "worker failed probation" event.
func oneWorkerCrashAfterReady(t *testing.T, balance string, flags ...string) (*Primary, Event, *loadgen.Run) {
	t.Helper()
	p := StartPrimary(t, Options{Workers: 1, MinUptime: "5s", Args: []string{"--crash-after", "1s", "--crash-drain"},
		Flags: append([]string{"--balance", balance}, flags...)})
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	load, _ := startNewConnLoad(t, p.URL())

	p.Install("crashlater")
	mark := p.Log.Len()
	p.Signal(p.PID, syscall.SIGHUP)
	u := p.AwaitUpgrade(mark, time.Minute)
	if !u.RolledBack() {
		t.Fatalf("generation %d: %s, want \"upgrade rolled back\"", u.Gen, u.End.Raw)
	}
	failed, ok := p.Log.Wait(mark, 0, isMsg("worker failed probation"))
	if !ok {
		t.Fatalf("no \"worker failed probation\"")
	}
	return p, failed, load
}

// oneWorkerServesAgain checks the end of oneWorkerCrashAfterReady: the old
// version serves alone, and no request failed.
func oneWorkerServesAgain(t *testing.T, p *Primary, load *loadgen.Run) {
	t.Helper()
	p.WaitServing(p.URL(), "v1", 20*time.Second)
	res := load.Stop()
	t.Logf("load: %s", res)
	if res.Failures != 0 {
		t.Errorf("%d of %d requests failed: %v %q", res.Failures, res.Requests, res.FailuresByKind, res.FirstErrors)
	}
	if res.Versions["vcrashlater"] == 0 {
		t.Errorf("versions served %v: the new version never answered", res.Versions)
	}
	serveOnly(t, p, "v1", "after the roll-back")
	checkInvariant(t, p.Log.Events(), p.Workers)
}
