//go:build linux

package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// awaitWatchedUpgrade waits for the deploy a file change caused after
// index from: a "change detected", then the upgrade it asked for.
func (p *Primary) awaitWatchedUpgrade(from int, d time.Duration) Upgrade {
	p.t.Helper()
	ch, ok := p.Log.Wait(from, d, isMsg("change detected"))
	if !ok {
		p.t.Fatalf("no \"change detected\" within %s\n%s", d, p.Tail(60))
	}
	return p.AwaitUpgrade(ch.Seq, d)
}

// countMsg counts the events with msg.
func (p *Primary) countMsg(msg string) int { return len(p.Log.Filter(msg)) }

// TestWatchDeploysUnderLoad: with --watch, a new executable renamed over
// the worker command rolls out without a HUP and without a failed request,
// one deploy per change; a build that crashes is refused and the old one
// keeps serving.
func TestWatchDeploysUnderLoad(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{Flags: []string{"--watch", "--ready-timeout", "5s"}})
	if _, ok := p.Log.Wait(0, time.Second, isMsg("watching")); !ok {
		t.Errorf("no \"watching\" event\n%s", p.Tail(20))
	}
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	load := startLoad(t, p.URL())

	for _, v := range []string{"v2", "v3", "v4"} {
		mark := p.Log.Len()
		p.Install(v)
		u := p.awaitWatchedUpgrade(mark, 60*time.Second)
		if u.Aborted() {
			t.Fatalf("%s: generation %d aborted: %s", v, u.Gen, u.End.Raw)
		}
		if k := u.Started.Str("kind"); k != "workers" {
			t.Errorf("%s: kind %q, want workers", v, k)
		}
		p.WaitServing(p.URL(), v, 20*time.Second)
	}
	noFailuresSoFar(t, load, "after three watched deploys")

	mark := p.Log.Len()
	p.Install("crash")
	if u := p.awaitWatchedUpgrade(mark, 60*time.Second); !u.Aborted() {
		t.Errorf("the crash build was not refused: %s", u.End.Raw)
	}
	p.WaitServing(p.URL(), "v4", 20*time.Second)
	mark = p.Log.Len()
	p.Install("v5")
	if u := p.awaitWatchedUpgrade(mark, 60*time.Second); u.Aborted() {
		t.Fatalf("v5 after the crash build: %s", u.End.Raw)
	}
	p.WaitServing(p.URL(), "v5", 20*time.Second)
	res := checkLoad(t, load, "v5")
	if res.Versions["vcrash"] != 0 {
		t.Errorf("the crash build answered %d requests", res.Versions["vcrash"])
	}
	if n := p.countMsg("upgrade started"); n != 5 {
		t.Errorf("%d upgrades for 5 changes, want one each", n)
	}
	events := p.Log.Events()
	checkPrimaryField(t, events, p.PID)
	checkInvariant(t, events, p.Workers)
}

// TestWatchHalfWrittenNeverStarted: the worker command deleted and then
// written in place slowly, with long pauses, is waited for: nothing is
// started until the whole file is there, and then it rolls out.
func TestWatchHalfWrittenNeverStarted(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{Flags: []string{"--watch"}})
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	load := startLoad(t, p.URL())
	v2, err := os.ReadFile(servers["v2"])
	if err != nil {
		t.Fatal(err)
	}
	mark := p.Log.Len()
	if err := os.Remove(p.Server); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(p.Server, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	nothingStarts := func(when string) {
		t.Helper()
		// Far longer than the watch's debounce: a deploy of the partial
		// file would have begun.
		if e, ok := p.Log.Wait(mark, 1500*time.Millisecond, isMsg("change detected", "upgrade started", "worker spawned")); ok {
			t.Fatalf("%s: %s", when, e.Raw)
		}
	}
	nothingStarts("missing executable")
	for i, end := range []int{4096, len(v2) / 2, len(v2) - 1} {
		start := []int{0, 4096, len(v2) / 2}[i]
		if _, err := f.Write(v2[start:end]); err != nil {
			t.Fatal(err)
		}
		nothingStarts("partly written executable")
	}
	if _, err := f.Write(v2[len(v2)-1:]); err != nil {
		t.Fatal(err)
	}
	f.Close()
	u := p.awaitWatchedUpgrade(mark, 60*time.Second)
	if u.Aborted() {
		t.Fatalf("the completed file was refused: %s", u.End.Raw)
	}
	p.WaitServing(p.URL(), "v2", 20*time.Second)
	checkLoad(t, load, "v2")
	for _, e := range p.Log.Filter("worker exited") {
		if g := e.Int0("generation"); g > 1 {
			t.Errorf("a new worker exited: %s", e.Raw)
		}
	}
	if n := p.countMsg("upgrade started"); n != 1 {
		t.Errorf("%d upgrades, want 1", n)
	}
	checkInvariant(t, p.Log.Events(), p.Workers)
}

// TestWatchChangeDuringUpgradeQueues: a change while a watched deploy runs
// queues exactly one more deploy; the last version wins.
func TestWatchChangeDuringUpgradeQueues(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{Flags: []string{"--watch"}})
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	load := startLoad(t, p.URL())
	mark := p.Log.Len()
	p.Install("slowready") // READY=1 after 2s: the deploy takes a while
	slow := fileIno(t, p.Server)
	st, ok := p.Log.Wait(mark, 30*time.Second, isMsg("upgrade started"))
	if !ok {
		t.Fatalf("no upgrade started\n%s", p.Tail(40))
	}
	// The next change must come while the slow build runs: wait until its
	// first worker has exec'd it, or a quick rename would put v2 in its
	// place before the exec and no deploy would be slow.
	sp, ok := p.Log.Wait(st.Seq, 30*time.Second, func(e Event) bool {
		return e.Msg == "worker spawned" && e.Int0("generation") == st.Int0("generation")
	})
	if !ok {
		t.Fatalf("no worker spawned for the slow deploy\n%s", p.Tail(40))
	}
	waitUntil(t, 10*time.Second, "the slow build running", func() bool {
		ino, err := fileInoErr(fmt.Sprintf("/proc/%d/exe", sp.Int0("pid")))
		return err == nil && ino == slow
	})
	from := st.Seq
	for _, v := range []string{"v2", "v3"} {
		p.Install(v)
		e, ok := p.Log.Wait(from, 30*time.Second, isMsg("change detected"))
		if !ok {
			t.Fatalf("no change detected for %s", v)
		}
		from = e.Seq + 1
	}
	p.WaitServing(p.URL(), "v3", 60*time.Second)
	if _, ok := p.Log.Wait(mark, 30*time.Second, func(e Event) bool {
		return e.Msg == "upgrade finished" && e.Int0("generation") > st.Int0("generation")
	}); !ok {
		t.Fatalf("no later upgrade finished\n%s", p.Tail(40))
	}
	checkLoad(t, load, "v3")
	ups := p.Log.Filter("upgrade started")
	if len(ups) < 2 || len(ups) > 3 {
		t.Errorf("%d upgrades for a change during an upgrade and two more, want 2 (or 3 if the first ended between the changes)", len(ups))
	}
	if len(p.Log.Filter("upgrade queued")) == 0 {
		t.Errorf("no \"upgrade queued\"")
	}
	checkInvariant(t, p.Log.Events(), p.Workers)
}

// TestWatchSelfUpgrade: a change that comes with a new handoff binary
// upgrades the primary; the new primary watches too.
func TestWatchSelfUpgrade(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{Flags: []string{"--watch"}})
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	load := startLoad(t, p.URL())
	old := p.PID

	mark := p.Log.Len()
	p.InstallHandoff()
	p.Install("v2")
	u := p.awaitWatchedUpgrade(mark, 60*time.Second)
	if u.Aborted() || u.Started.Str("kind") != "primary" {
		t.Fatalf("want a finished primary upgrade: %s / %s", u.Started.Raw, u.End.Raw)
	}
	successor := p.waitSuccessor(old, 30*time.Second)
	p.WaitServing(p.URL(), "v2", 20*time.Second)
	if st := p.WaitExit(30 * time.Second); st == nil {
		t.Fatalf("old primary %d still running", old)
	}

	mark = p.Log.Len()
	p.Install("v3")
	u = p.awaitWatchedUpgrade(mark, 60*time.Second)
	if u.Aborted() || u.Started.Int0("primary") != successor || u.Started.Str("kind") != "workers" {
		t.Fatalf("want a workers deploy by the new primary %d: %s / %s", successor, u.Started.Raw, u.End.Raw)
	}
	p.WaitServing(p.URL(), "v3", 20*time.Second)
	checkLoad(t, load, "v3")
	if n := p.countMsg("upgrade started"); n != 2 {
		var ups []string
		for _, e := range p.Log.Filter("upgrade started") {
			ups = append(ups, e.Raw)
		}
		t.Errorf("%d upgrades for 2 changes:\n%s", n, strings.Join(ups, "\n"))
	}
	checkInvariant(t, p.Log.Events(), p.Workers)
}

// TestWatchLibraryMode: a library-mode program with Config.Watch
// (examples/hello --watch) watches its own executable: each new build
// renamed into place upgrades the primary and rolls the workers, with no
// HUP and no failed request, and the new primary watches in turn.
func TestWatchLibraryMode(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{Lib: "hello-v1", Flags: []string{"--watch"}})
	p.WaitServing(p.URL(), "v1", 20*time.Second)
	load := startLoad(t, p.URL())
	for _, v := range []string{"v2", "v1"} {
		old := p.Current()
		mark := p.Log.Len()
		p.InstallLib("hello-" + v)
		u := p.awaitWatchedUpgrade(mark, 60*time.Second)
		if u.Aborted() || u.Started.Str("kind") != "primary" {
			t.Fatalf("%s: want a finished upgrade of the primary: %s / %s", v, u.Started.Raw, u.End.Raw)
		}
		p.waitSuccessor(old, 30*time.Second)
		p.WaitServing(p.URL(), v, 20*time.Second)
		if left := waitGone([]int{old}, 30*time.Second); len(left) > 0 {
			t.Errorf("old primary %d still running after handing over", old)
		}
	}
	checkLoad(t, load, "v1")
	if n := p.countMsg("upgrade started"); n != 2 {
		t.Errorf("%d upgrades for 2 new builds", n)
	}
	checkInvariant(t, p.Log.Events(), p.Workers)
	p.shutdownAll(p.Current())
}

// TestWatchSymlinkReleases: with COMMAND a symlink (current ->
// releases/N/server), switching it deploys; deleting the old release is
// no deploy; the next switch deploys again.
func TestWatchSymlinkReleases(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{Command: "$DIR/current", Flags: []string{"--watch"}, Prepare: func(dir string) {
		for _, r := range []struct{ n, variant string }{{"1", "v1"}, {"2", "v2"}, {"3", "v3"}} {
			if err := os.MkdirAll(filepath.Join(dir, "releases", r.n), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := copyFile(servers[r.variant], filepath.Join(dir, "releases", r.n, "server"), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		switchSymlink(t, filepath.Join(dir, "current"), "releases/1/server")
	}})
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	load := startLoad(t, p.URL())
	link := filepath.Join(p.Dir, "current")

	mark := p.Log.Len()
	switchSymlink(t, link, "releases/2/server")
	if u := p.awaitWatchedUpgrade(mark, 60*time.Second); u.Aborted() {
		t.Fatalf("release 2: %s", u.End.Raw)
	}
	p.WaitServing(p.URL(), "v2", 20*time.Second)

	mark = p.Log.Len()
	if err := os.RemoveAll(filepath.Join(p.Dir, "releases", "1")); err != nil {
		t.Fatal(err)
	}
	if e, ok := p.Log.Wait(mark, time.Second, isMsg("change detected", "upgrade started")); ok {
		t.Errorf("deleting the old release deployed: %s", e.Raw)
	}

	switchSymlink(t, link, "releases/3/server")
	if u := p.awaitWatchedUpgrade(mark, 60*time.Second); u.Aborted() {
		t.Fatalf("release 3: %s", u.End.Raw)
	}
	p.WaitServing(p.URL(), "v3", 20*time.Second)
	checkLoad(t, load, "v3")
	if n := p.countMsg("upgrade started"); n != 2 {
		t.Errorf("%d upgrades for 2 switches", n)
	}
	checkInvariant(t, p.Log.Events(), p.Workers)
}

func fileIno(t *testing.T, path string) uint64 {
	t.Helper()
	ino, err := fileInoErr(path)
	if err != nil {
		t.Fatal(err)
	}
	return ino
}

func fileInoErr(path string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// waitUntil polls cond every 10ms and fails the test if it does not hold
// within d.
func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(d); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("not %s within %s", what, d)
		}
	}
}
