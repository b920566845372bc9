//go:build linux

package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/internal/testutil"
)

// blockingWorker installs testdata/blocking_worker.py as DIR/blocking.py,
// run by python3, serving the version in DIR/VERSION. It skips the test
// where python3 is missing (fails it under CI: .ci/deps installs it).
func blockingWorker(t *testing.T, version string) func(dir string) {
	t.Helper()
	// Debian's, when there: a python3 found in PATH may be a wrapper
	// script that takes long to start.
	py := "/usr/bin/python3"
	if _, err := os.Stat(py); err != nil {
		if py, err = exec.LookPath("python3"); err != nil {
			testutil.Need(t, "python3 not found: %v", err)
		}
	}
	src, err := os.ReadFile("testdata/blocking_worker.py")
	if err != nil {
		t.Fatal(err)
	}
	return func(dir string) {
		writeBytes(t, filepath.Join(dir, "blocking.py"), append([]byte("#!"+py+"\n"), src...), 0o755)
		writeBytes(t, filepath.Join(dir, "VERSION"), []byte(version+"\n"), 0o644)
	}
}

// TestBlockingAcceptWorker: a worker that calls a plain blocking accept(2)
// on fd 3, as systemd's contract allows, gets the socket in blocking mode
// at exec and never sees accept fail, through deploys and a hand-over to
// a new primary, under load: no failed request, no crashed worker.
func TestBlockingAcceptWorker(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{
		Command: "$DIR/blocking.py",
		Prepare: blockingWorker(t, "v1"),
	})
	p.WaitServing(p.URL(), "v1", 15*time.Second)
	old := p.PID
	load := startLoad(t, p.URL())

	deploy := func(version string, newPrimary bool) Upgrade {
		t.Helper()
		writeBytes(t, filepath.Join(p.Dir, "VERSION"), []byte(version+"\n"), 0o644)
		if newPrimary {
			p.InstallHandoff()
		}
		before := load.Snapshot().Requests
		u := p.DeployOK(60 * time.Second)
		want := "workers"
		if newPrimary {
			want = "primary"
		}
		if k := u.Started.Str("kind"); k != want {
			t.Errorf("generation %d: kind %q, want %q", u.Gen, k, want)
		}
		if after := load.Snapshot().Requests; after <= before {
			t.Errorf("generation %d: no request completed during the deploy", u.Gen)
		}
		p.WaitServing(p.URL(), version, 20*time.Second)
		noFailuresSoFar(t, load, "generation "+version)
		return u
	}
	deploy("v2", false)
	deploy("v3", false)
	deploy("v4", true)
	successor := p.waitSuccessor(old, 30*time.Second)
	if st := p.WaitExit(30 * time.Second); st == nil || st.ExitCode() != 0 {
		t.Errorf("old primary after handing over: %v, want exit status 0", st)
	}
	u := deploy("v5", false)
	if pid := u.Started.Int0("primary"); pid != successor {
		t.Errorf("generation %d deployed by primary %d, want the new primary %d", u.Gen, pid, successor)
	}
	res := checkLoad(t, load, "v5")
	for v := range res.Versions {
		if strings.Contains(v, "nonblocking") {
			t.Errorf("answers from workers that found fd 3 non-blocking at exec: %v", res.Versions)
			break
		}
	}
	for _, e := range p.Log.Filter("worker exited") {
		if e.Str("status") != "exit status 0" {
			t.Errorf("a worker ended with %s: %s", e.Str("status"), e.Raw)
		}
	}
	events := p.Log.Events()
	checkPrimaryField(t, events, old, successor)
	checkInvariant(t, events, p.Workers)
}
