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
	exe, err := f.Open()
	if err != nil {
		t.Fatal(err)
	}
	return pinnedExe(t, path, exe, nfds, via, argv...)
}

// pinnedExe is pinned with the file to exec already open (the shim gets
// no descriptor when exe is nil).
func pinnedExe(t *testing.T, path string, exe *os.File, nfds int, via bool, argv ...string) (*exec.Cmd, *strings.Builder) {
	t.Helper()
	if os.Getenv("LISTEN_FDS") != "" {
		testutil.Need(t, "LISTEN_FDS set in the test's own environment")
	}
	var files []*os.File
	for range nfds {
		dn, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { dn.Close() })
		files = append(files, dn)
	}
	env := []string{"LISTEN_FDS=" + strconv.Itoa(nfds)}
	if exe != nil {
		t.Cleanup(func() { exe.Close() })
		fd := 3 + len(files)
		files = append(files, exe)
		env = append(env, EnvExecFD+"="+strconv.Itoa(fd))
		if via {
			link, err := pin.ExecLink(t.TempDir(), fd, filepath.Base(path))
			if err != nil {
				t.Fatal(err)
			}
			env = append(env, EnvExecVia+"="+link)
		}
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

// A #! script runs by its own path, with its pinned interpreter: $0 is
// the script's path whatever was renamed over it (byte-identical or not),
// so that what it finds next to itself is found; a changed script is
// what runs then, and Exec says so.
func TestExecPinnedScript(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "app.sh")
	sh := filepath.Join(dir, "sh")
	install(t, sh, systemBinary(t, "sh"))
	v1 := []byte("#!" + sh + "\necho \"v1|$0|$1|$(basename \"$(readlink /proc/$$/exe)\")\"\n")
	install(t, path, v1)
	f := pinFile(t, path)
	if id, ok := f.Interpreter(); !ok || id.Path != sh {
		t.Fatalf("interpreter %+v, %v; want %s pinned", id, ok, sh)
	}
	// The interpreter is replaced too: the pinned one still runs (its
	// name is the original's).
	install(t, sh, systemBinary(t, "false"))

	for _, step := range []struct {
		name    string
		content []byte
		want    string
		changed bool
	}{
		{"unchanged", nil, "v1", false},
		{"renamed, byte-identical", v1, "v1", false},
		{"renamed, changed", []byte("#!" + sh + "\necho \"v2|$0|$1|$(basename \"$(readlink /proc/$$/exe)\")\"\n"), "v2", true},
	} {
		if step.content != nil {
			install(t, path, step.content)
		}
		exe, argv, note, err := f.Exec([]string{"app.sh", "arg"})
		if err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if (note != "") != step.changed || step.changed && !strings.Contains(note, path) {
			t.Errorf("%s: note %q", step.name, note)
		}
		cmd, stderr := pinnedExe(t, path, exe, 1, true, argv...)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s: %v: %s", step.name, err, stderr)
		}
		if got, want := strings.TrimSpace(string(out)), step.want+"|"+path+"|arg|sh (deleted)"; got != want {
			t.Errorf("%s: the script saw %q, want %q", step.name, got, want)
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
