//go:build linux

package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/internal/testutil"
)

// TestWorkersFromCPUQuota: without --workers, a primary in a cgroup whose
// CPU quota is half a CPU starts 1 worker (not one per CPU of the
// machine) and logs the number and the quota it comes from.
func TestWorkersFromCPUQuota(t *testing.T) {
	t.Parallel()
	dir, from := cpuCgroup(t)
	p := StartPrimary(t, Options{
		Workers:        1,
		DefaultWorkers: true,
		Wrap:           []string{"/bin/sh", "-c", `echo $$ > ` + filepath.Join(dir, "cgroup.procs") + ` && exec "$0" "$@"`},
	})
	ev, ok := p.Log.Wait(0, 0, isMsg("workers"))
	if !ok {
		t.Fatalf("no \"workers\" event\n%s", p.Tail(20))
	}
	if ev.Int0("workers") != 1 || ev.Str("from") != from {
		t.Errorf("\"workers\" event %s, want workers 1 from %q", ev.Raw, from)
	}
	if ready := p.WaitReady(0); ready.Int0("workers") != 1 {
		t.Errorf("primary ready with %s, want 1 worker", ready.Raw)
	}
	if n := len(p.LiveWorkers()); n != 1 {
		t.Errorf("%d workers running, want 1", n)
	}
	p.WaitServing(p.URL(), "v1", 20*time.Second)

	// With --workers given, the flag wins and no default is logged.
	q := StartPrimary(t, Options{Workers: 2,
		Wrap: []string{"/bin/sh", "-c", `echo $$ > ` + filepath.Join(dir, "cgroup.procs") + ` && exec "$0" "$@"`}})
	if ev, ok := q.Log.Wait(0, 0, isMsg("workers")); ok {
		t.Errorf("\"workers\" event with --workers given: %s", ev.Raw)
	}
	if ready := q.WaitReady(0); ready.Int0("workers") != 2 {
		t.Errorf("primary ready with %s, want 2 workers", ready.Raw)
	}
}

// cpuCgroup makes a cgroup limited to half a CPU for the test, and returns
// its directory and the "from" a primary in it should log. It skips the
// test where cgroups cannot be made (not root, no cpu controller).
func cpuCgroup(t *testing.T) (dir, from string) {
	t.Helper()
	if os.Geteuid() != 0 {
		testutil.Need(t, "making a cgroup needs root")
	}
	name := "handoff-test-" + newMark(t)
	var files map[string]string
	switch {
	case fileExists("/sys/fs/cgroup/cgroup.controllers") && strings.Contains(readString("/sys/fs/cgroup/cgroup.controllers"), "cpu"):
		dir = filepath.Join("/sys/fs/cgroup", name)
		files = map[string]string{"cpu.max": "50000 100000"}
		from = "cgroup cpu.max 50000 100000"
	case fileExists("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"):
		dir = filepath.Join("/sys/fs/cgroup/cpu", name)
		files = map[string]string{"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "50000"}
		from = "cgroup cpu.cfs_quota_us 50000, cpu.cfs_period_us 100000"
	default:
		testutil.Need(t, "no cgroup cpu controller mounted at /sys/fs/cgroup or /sys/fs/cgroup/cpu")
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		testutil.Need(t, "cannot make a cgroup: %v", err)
	}
	t.Cleanup(func() {
		// Empty once the test's processes are gone (cleaned up before).
		end := time.Now().Add(10 * time.Second)
		for os.Remove(dir) != nil && time.Now().Before(end) {
			time.Sleep(20 * time.Millisecond)
		}
		if fileExists(dir) {
			t.Errorf("cgroup %s left: %s", dir, readString(filepath.Join(dir, "cgroup.procs")))
		}
	})
	for _, f := range []string{"cpu.cfs_period_us", "cpu.cfs_quota_us", "cpu.max"} {
		if v, ok := files[f]; ok {
			if err := os.WriteFile(filepath.Join(dir, f), []byte(v), 0o644); err != nil {
				t.Fatalf("cgroup %s: %v", f, err)
			}
		}
	}
	return dir, from
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func readString(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}
