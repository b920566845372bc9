//go:build linux

// Package integration holds handoff's end-to-end tests: they build the
// handoff CLI and the test worker (integration/testserver), run real
// primaries on 127.0.0.1 and check what a user would see: requests answered,
// versions served, processes started and gone, and the primary's JSON log.
package integration

import (
	"bytes"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/handoff-dev/handoff/internal/testutil"
)

// Built once by TestMain into a temporary directory; tests copy what they
// need into their own t.TempDir().
var (
	buildDir   string
	handoffBin string
	// servers maps a variant name to a testserver binary.
	servers = map[string]string{}
	// raceBuild: HANDOFF_TEST_RACE=1 builds every primary (the handoff CLI
	// and the library-mode programs) with -race, and a test fails when
	// any process it started reported a data race ("WARNING: DATA RACE"
	// on the primary's stderr, which its workers' stderr also reaches).
	// Slower; run a subset with -run on a loaded machine:
	//	HANDOFF_TEST_RACE=1 go test -count=1 ./integration/ -run TestX
	raceBuild = os.Getenv("HANDOFF_TEST_RACE") == "1"
)

// raceWarning is how the race detector starts each report.
const raceWarning = "WARNING: DATA RACE"

// serverVariant is one worker build: its version string and mode; pkg is
// the program, ./integration/testserver when empty.
type serverVariant struct{ name, version, mode, pkg string }

var serverVariants = []serverVariant{
	{"v1", "v1", "ok", ""},
	{"v2", "v2", "ok", ""},
	{"v3", "v3", "ok", ""},
	{"v4", "v4", "ok", ""},
	{"v5", "v5", "ok", ""},
	{"crash", "vcrash", "crash", ""},
	{"noready", "vnoready", "noready", ""},
	{"slowready", "vslow", "slowready", ""},
	{"crashlater", "vcrashlater", "crashlater", ""},
	// Serves, but /healthz answers 500.
	{"sick", "vsick", "sick", ""},
	// Crashes at start in slot 1 only (HANDOFF_WORKER=1), serves elsewhere.
	{"crashslot", "vcrashslot", "crashslot", ""},
	// The example README.md and 'make run' show.
	{"wrapped-v1", "v1", "", "./examples/wrapped-go"},
	{"wrapped-v2", "v2", "", "./examples/wrapped-go"},
	// Library mode: the program is its own primary.
	{"hello-v1", "v1", "", "./examples/hello"},
	{"hello-v2", "v2", "", "./examples/hello"},
	{"libapp-v1", "v1", "", "./integration/libapp"},
	{"libapp-v2", "v2", "", "./integration/libapp"},
	{"libapp-crash", "vcrash", "crash", "./integration/libapp"},
	// Binds its own port ($PORT): bind adoption.
	{"bind-v1", "v1", "", "./integration/bindserver"},
	{"bind-v2", "v2", "", "./integration/bindserver"},
	// Binds its own port too, and on SIGTERM calls Shutdown, nothing more.
	{"plain-v1", "v1", "", "./integration/plaingo"},
	{"plain-v2", "v2", "", "./integration/plaingo"},
}

func TestMain(m *testing.M) {
	// As a wrapper that runs a process as on an old kernel, it only execs.
	testutil.OldKernelMain()
	testutil.NoSeccompMain()
	testutil.NoReusePortMain()
	testutil.NoPtraceMain()
	// As another user's fake control server, it only serves.
	fakeControlMain()
	// Whatever this process inherited from its own parent must not reach
	// the processes the tests start: the tests check exactly which fds a
	// primary passes on, with an inherited fd of their own (see
	// TestWorkerEnvironment).
	unix.CloseRange(3, math.MaxUint32, unix.CLOSE_RANGE_CLOEXEC)
	dir, err := os.MkdirTemp("", "handoff-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		os.Exit(1)
	}
	if err := buildAll(dir); err != nil {
		fmt.Fprintln(os.Stderr, "integration: build:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %v", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("not inside a module")
	}
	return filepath.Dir(mod), nil
}

func buildAll(dir string) error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	buildDir = dir
	handoffBin = filepath.Join(dir, "handoff")
	type job struct {
		out  string
		args []string
	}
	race := func(args ...string) []string {
		if raceBuild {
			return append([]string{"build", "-race"}, args[1:]...)
		}
		return args
	}
	jobs := []job{{handoffBin, race("build", "-o", handoffBin, "./cmd/handoff")}}
	for _, v := range serverVariants {
		out := filepath.Join(dir, "testserver-"+v.name)
		servers[v.name] = out
		pkg, ldflags := v.pkg, fmt.Sprintf("-X main.version=%s", v.version)
		if pkg == "" {
			pkg = "./integration/testserver"
		}
		if v.mode != "" {
			ldflags += " -X main.mode=" + v.mode
		}
		args := []string{"build", "-o", out, "-ldflags", ldflags, pkg}
		if v.pkg != "" && v.pkg != "./examples/wrapped-go" && v.pkg != "./integration/plaingo" {
			// A library-mode program is a primary itself.
			args = race(args...)
		}
		jobs = append(jobs, job{out, args})
	}
	// Two at a time: the machine has two cores and the link steps dominate.
	sem := make(chan struct{}, 2)
	var mu sync.Mutex
	var errs []string
	var wg sync.WaitGroup
	for _, j := range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			cmd := exec.Command("go", j.args...)
			cmd.Dir = root
			var buf bytes.Buffer
			cmd.Stdout, cmd.Stderr = &buf, &buf
			if err := cmd.Run(); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Sprintf("go %s: %v\n%s", strings.Join(j.args, " "), err, buf.String()))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "\n"))
	}
	return nil
}

// copyFile copies src to dst with mode perm, through a temporary name in
// dst's directory and a rename, the way a deploy replaces a running binary.
func copyFile(src, dst string, perm os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := filepath.Join(filepath.Dir(dst), "."+filepath.Base(dst)+".new")
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp, perm); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}
