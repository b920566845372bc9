//go:build linux

package shim

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/handoff-dev/handoff/internal/pin"
	"github.com/handoff-dev/handoff/internal/testutil"
)

var (
	install      = testutil.Install
	systemBinary = testutil.Program
)

// pinned runs the shim for path with the pinned file of f passed as a
// launcher passes it: after nfds listeners (/dev/null here), named in
// EnvExecFD, and through an exec link named like the command if via.
func pinned(t *testing.T, path string, f *pin.File, nfds int, via bool, argv ...string) (*exec.Cmd, *strings.Builder) {
	t.Helper()
	if os.Getenv("LISTEN_FDS") != "" {
		testutil.Need(t, "LISTEN_FDS set in the test's own environment")
	}
	exe, err := f.Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { exe.Close() })
	var files []*os.File
	for range nfds {
		dn, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { dn.Close() })
		files = append(files, dn)
	}
	fd := 3 + len(files)
	files = append(files, exe)
	env := []string{"LISTEN_FDS=" + strconv.Itoa(nfds), EnvExecFD + "=" + strconv.Itoa(fd)}
	if via {
		link, err := pin.ExecLink(t.TempDir(), fd, filepath.Base(path))
		if err != nil {
			t.Fatal(err)
		}
		env = append(env, EnvExecVia+"="+link)
	}
	cmd, stderr := shim(t, path, env, argv...)
	cmd.ExtraFiles = files
	return cmd, stderr
}

func pinFile(t *testing.T, path string) *pin.File {
	t.Helper()
	f, err := pin.Pin(path, pin.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// The shim execs the pinned file, not the build renamed over its path
// since, nor the one written into it in place.
func TestExecPinnedBinary(t *testing.T) {
	yes, no := systemBinary(t, "true"), systemBinary(t, "false")
	path := filepath.Join(t.TempDir(), "server")
	install(t, path, yes)
	f := pinFile(t, path)
	install(t, path, no)

	for _, via := range []bool{false, true} {
		cmd, stderr := pinned(t, path, f, 1, via, "server")
		if err := cmd.Run(); err != nil {
			t.Errorf("via %v: %v (%s), want the pinned true", via, err, stderr)
		}
	}
	// Without the pin, the shim runs what the path holds now.
	cmd, _ := shim(t, path, nil, "server")
	if cmd.Run() == nil {
		t.Fatal("the path should run false")
	}

	// Rewritten in place and deleted: the pin's copy.
	other := filepath.Join(t.TempDir(), "server")
	install(t, other, yes)
	g := pinFile(t, other)
	w, err := os.OpenFile(other, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(no)
	w.Close()
	os.Remove(other)
	cmd, stderr := pinned(t, other, g, 2, true, "server")
	if err := cmd.Run(); err != nil {
		t.Errorf("rewritten and deleted: %v (%s), want the pinned true", err, stderr)
	}
}

// A pinned binary runs under its command's name (through the exec link),
// with the listeners and nothing of the pin: its descriptor is closed at
// exec, and the shim's variables are gone from its environment.
func TestExecPinnedLeavesNoTrace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "server")
	install(t, path, systemBinary(t, "sh"))
	f := pinFile(t, path)
	cmd, stderr := pinned(t, path, f, 1, true, "server", "-c",
		`printf "%s|%s|%s|" "$(cat /proc/$$/comm)" "${HANDOFF_SHIM_EXEC_FD-unset}${HANDOFF_SHIM_EXEC_VIA-unset}" "$(readlink /proc/$$/exe)"; for fd in 3 4 5; do if [ -e /proc/$$/fd/$fd ]; then printf "$fd "; fi; done`)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%v: %s", err, stderr)
	}
	if got, want := strings.TrimSpace(string(out)), "server|unsetunset|"+path+"|3"; got != want {
		t.Errorf("the command saw %q, want %q", got, want)
	}
}

// A #! script runs by its path while that is the pinned file ($0 as
// without a pin), and from the pinned descriptor once the path holds
// another one.
func TestExecPinnedScript(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.sh")
	install(t, path, []byte("#!/bin/sh\necho \"v1|$0|$1\"\n"))
	f := pinFile(t, path)
	cmd, stderr := pinned(t, path, f, 1, true, "app.sh", "arg")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%v: %s", err, stderr)
	}
	if got, want := strings.TrimSpace(string(out)), "v1|"+path+"|arg"; got != want {
		t.Errorf("unchanged script: %q, want %q", got, want)
	}

	install(t, path, []byte("#!/bin/sh\necho \"v2|$0|$1\"\n"))
	for _, via := range []bool{false, true} {
		cmd, stderr = pinned(t, path, f, 1, via, "app.sh", "arg")
		out, err = cmd.Output()
		if err != nil {
			t.Fatalf("via %v: %v: %s", via, err, stderr)
		}
		got := strings.Split(strings.TrimSpace(string(out)), "|")
		if len(got) != 3 || got[0] != "v1" || got[1] == path || got[2] != "arg" {
			t.Errorf("replaced script, via %v: %q, want v1 from the pinned descriptor", via, out)
		}
		if via && filepath.Base(got[1]) != "app.sh" {
			t.Errorf("replaced script through the exec link: $0 %q, want .../app.sh", got[1])
		}
	}
}

// A descriptor that is not open is a failed exec with one line, never the
// file at the path instead.
func TestExecPinnedBadFD(t *testing.T) {
	path := script(t, "exit 0\n")
	for _, fd := range []string{"9", "x", "1"} {
		cmd, stderr := shim(t, path, []string{EnvExecFD + "=" + fd}, "worker")
		cmd.Run()
		if code := cmd.ProcessState.ExitCode(); code != ExitCannotExec {
			t.Errorf("%s=%s: exit code %d, want %d", EnvExecFD, fd, code, ExitCannotExec)
		}
		lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
		if len(lines) != 1 || !strings.HasPrefix(lines[0], "handoff: cannot exec worker command "+path+": pinned file") {
			t.Errorf("%s=%s: stderr %q", EnvExecFD, fd, stderr)
		}
	}
}
