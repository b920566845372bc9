//go:build linux

package integration

import (
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/internal/testutil"
)

// TestExampleWrappedGo: examples/wrapped-go, which imports nothing of
// handoff, serves under handoff run and survives four deploys under load
// with no failed request.
func TestExampleWrappedGo(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{Server: "wrapped-v1"})
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	load := startLoad(t, p.URL())
	for _, v := range []string{"v2", "v1", "v2", "v1"} {
		deployUnderLoad(t, p, load, "wrapped-"+v, v)
		waitRequests(t, load, 500, 10*time.Second)
	}
	checkLoad(t, load, "v1")
	checkInvariant(t, p.Log.Events(), p.Workers)
}

// needProgram returns the path of name, skipping the test when it is not
// installed, except under CI, where `make deps` installs it
// (testutil.Need).
func needProgram(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		testutil.Need(t, "%s is not installed: run `make deps` (or .ci/deps) to install it", name)
	}
	return path
}

// copyExample copies the files of examples/NAME into dir.
func copyExample(t *testing.T, name, dir string, files ...string) {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if err := copyFile(filepath.Join(root, "examples", name, f), filepath.Join(dir, f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// deployVersionFile deploys version by writing DIR/VERSION (by rename),
// under load: the deploy finishes and only version is served after it.
func deployVersionFile(t *testing.T, p *Primary, version string) {
	t.Helper()
	installFile(t, filepath.Join(p.Dir, "VERSION"), version+"\n")
	p.DeployOK(90 * time.Second)
	p.WaitServing(p.URL(), version, 30*time.Second)
}

// exampleUnderDeploys runs one example under handoff run with load and
// deploys two new versions, with no failed request.
func exampleUnderDeploys(t *testing.T, o Options) {
	t.Helper()
	prepare := o.Prepare
	o.Prepare = func(dir string) {
		installFile(t, filepath.Join(dir, "VERSION"), "v1\n")
		prepare(dir)
	}
	p := StartPrimary(t, o)
	p.WaitServing(p.URL(), "v1", 30*time.Second)
	load := startLoad(t, p.URL())
	for _, v := range []string{"v2", "v3"} {
		before := load.Snapshot().Requests
		deployVersionFile(t, p, v)
		waitRequests(t, load, 300, 30*time.Second)
		if load.Snapshot().Requests <= before {
			t.Errorf("no request completed across the deploy of %s", v)
		}
	}
	checkLoad(t, load, "v3")
	checkInvariant(t, p.Log.Events(), p.Workers)
	p.shutdownAll(p.Current())
}

// TestExampleNode: examples/node/server.js under `handoff run --ipc --ready
// notify`: it takes fd 3, says ready with process.send on the message
// channel (Node cannot send sd_notify datagrams), and drains on SIGTERM
// with no failed request for keep-alive and new-connection clients.
func TestExampleNode(t *testing.T) {
	t.Parallel()
	node := needProgram(t, "node")
	exampleUnderDeploys(t, Options{
		Flags:   []string{"--ipc", "--drain-timeout", "15s"},
		Command: node,
		Args:    []string{"server.js"},
		Prepare: func(dir string) { copyExample(t, "node", dir, "server.js") },
	})
}

// TestExamplePython: examples/python/app.py under Debian's gunicorn,
// unmodified (LISTEN_FDS and READY=1), survives deploys under load.
func TestExamplePython(t *testing.T) {
	t.Parallel()
	gunicorn := needProgram(t, "gunicorn")
	exampleUnderDeploys(t, Options{
		Command: gunicorn,
		Args:    []string{"--workers", "2", "--graceful-timeout", "20", "app:app"},
		Prepare: func(dir string) { copyExample(t, "python", dir, "app.py") },
	})
}
