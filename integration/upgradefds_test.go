//go:build linux

package integration

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// openFiles counts pid's open descriptors, and among them the memfds
// (the in-memory copies of pinned executables).
func openFiles(t *testing.T, pid int) (fds, memfds int) {
	t.Helper()
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("primary %d: %v", pid, err)
	}
	for _, e := range entries {
		fds++
		if target, err := os.Readlink(dir + "/" + e.Name()); err == nil && strings.HasPrefix(target, "/memfd:") {
			memfds++
		}
	}
	return fds, memfds
}

// fdTargets lists what pid's descriptors refer to, for a failure message.
func fdTargets(pid int) []string {
	dir := "/proc/" + strconv.Itoa(pid) + "/fd"
	entries, _ := os.ReadDir(dir)
	var out []string
	for _, e := range entries {
		target, _ := os.Readlink(dir + "/" + e.Name())
		out = append(out, e.Name()+"->"+target)
	}
	return out
}

// TestFailedSelfUpgradesLeakNoFds: every deploy of a handoff binary that
// cannot start hands the same generations to the new primary; five of
// them leave the old primary with as many descriptors, and as many memfd
// copies of the worker's executable, as the first one did, and serving.
func TestFailedSelfUpgradesLeakNoFds(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{})
	old := p.PID
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	installFile(t, p.Bin, brokenHandoff)

	fail := func() {
		t.Helper()
		if u := p.Deploy(30 * time.Second); !u.Aborted() {
			t.Fatalf("generation %d with a broken handoff binary finished: %s", u.Gen, u.End.Raw)
		}
		p.waitSettled(old, 10*time.Second)
	}
	fail()
	fds, memfds := openFiles(t, old)
	if memfds == 0 {
		t.Logf("no memfd copy in primary %d (the pin keeps none here)", old)
	}
	const attempts = 5
	for i := 1; i < attempts; i++ {
		fail()
	}
	// A descriptor that comes and goes (a connection) may show for a
	// moment: the count must come back to the first one's.
	end := time.Now().Add(5 * time.Second)
	for {
		n, m := openFiles(t, old)
		if n <= fds && m <= memfds {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("after %d failed self-upgrades primary %d holds %d descriptors (%d memfds), after the first %d (%d memfds): %v",
				attempts, old, n, m, fds, memfds, fdTargets(old))
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	if got := p.PIDFromFile(); got != old {
		t.Errorf("pid file holds %d, want the old primary %d", got, old)
	}
	p.shutdownAll(old)
}
