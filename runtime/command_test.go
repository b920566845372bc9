//go:build linux

package runtime

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/handoff-dev/handoff/internal/shim"
)

// realTempDir is a fresh directory with every symlink on its path
// resolved, so that paths returned by resolveCommand can be compared.
func realTempDir(t *testing.T) string {
	t.Helper()
	dir, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

func writeExe(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("#!/bin/sh\nexit 0\n"), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func TestResolveCommandFindsInPath(t *testing.T) {
	dir := realTempDir(t)
	writeExe(t, filepath.Join(dir, "bin", "myserver"), 0o755)
	t.Setenv("PATH", filepath.Join(dir, "empty")+string(os.PathListSeparator)+filepath.Join(dir, "bin"))
	got, err := resolveCommand("myserver")
	if err != nil || got != filepath.Join(dir, "bin", "myserver") {
		t.Fatalf("resolveCommand = %q, %v", got, err)
	}
	if _, err := resolveCommand("no-such-server"); err == nil || !strings.Contains(err.Error(), `"no-such-server": not found in PATH`) {
		t.Fatalf("missing from PATH: %v", err)
	}
}

func TestResolveCommandFollowsSymlinks(t *testing.T) {
	dir := realTempDir(t)
	target := filepath.Join(dir, "releases", "42", "server")
	writeExe(t, target, 0o755)
	// current -> releases/42 (relative), and a link to the link.
	if err := os.Symlink(filepath.Join("releases", "42"), filepath.Join(dir, "current")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(dir, "current", "server"), filepath.Join(dir, "server")); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{filepath.Join(dir, "current", "server"), filepath.Join(dir, "server")} {
		if got, err := resolveCommand(name); err != nil || got != target {
			t.Fatalf("resolveCommand(%q) = %q, %v; want %q", name, got, err, target)
		}
	}
	// The switch is seen by the next resolution.
	target43 := filepath.Join(dir, "releases", "43", "server")
	writeExe(t, target43, 0o755)
	os.Remove(filepath.Join(dir, "current"))
	if err := os.Symlink(filepath.Join("releases", "43"), filepath.Join(dir, "current")); err != nil {
		t.Fatal(err)
	}
	if got, err := resolveCommand(filepath.Join(dir, "server")); err != nil || got != target43 {
		t.Fatalf("after the switch: %q, %v", got, err)
	}
	// A relative name becomes absolute.
	t.Chdir(dir)
	if got, err := resolveCommand("./server"); err != nil || got != target43 {
		t.Fatalf("relative: %q, %v", got, err)
	}
}

func TestResolveCommandErrors(t *testing.T) {
	dir := realTempDir(t)
	writeExe(t, filepath.Join(dir, "plain"), 0o644)
	if err := os.Mkdir(filepath.Join(dir, "adir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(dir, "gone"), filepath.Join(dir, "dangling")); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir)
	for _, c := range []struct{ name, want string }{
		{filepath.Join(dir, "plain"), "not executable (chmod +x it)"},
		{filepath.Join(dir, "missing"), "no such file"},
		{filepath.Join(dir, "dangling"), "no such file"},
		{filepath.Join(dir, "adir"), "is a directory"},
		{"missing", "not found in PATH"},
		// Non-executable files and directories in PATH are skipped.
		{"plain", "not found in PATH"},
		{"adir", "not found in PATH"},
	} {
		got, err := resolveCommand(c.name)
		if err == nil {
			t.Errorf("resolveCommand(%q) = %q, want an error", c.name, got)
			continue
		}
		if msg := err.Error(); !strings.HasPrefix(msg, "worker command ") || !strings.Contains(msg, c.want) {
			t.Errorf("resolveCommand(%q): %v, want %q", c.name, err, c.want)
		}
	}
}

func TestWorkerEnv(t *testing.T) {
	in := []string{
		"PATH=/usr/bin",
		"HOME=/root",
		"LISTEN_FDS=2",
		"LISTEN_PID=1",
		"LISTEN_FDNAMES=a:b",
		"LISTEN_ANYTHING=x",
		"NOTIFY_SOCKET=/run/systemd/notify",
		"WATCHDOG_USEC=1000",
		"WATCHDOG_PID=1",
		"HANDOFF_WORKER=3",
		"HANDOFF_GENERATION=4",
		"HANDOFF_SHIM_EXEC=/bin/x",
		"HANDOFF_SHIM_EXEC_FD=7",
		"HANDOFF_SHIM_EXEC_VIA=/tmp/x",
		"HANDOFF_SHIM_EXEC_TRACE=1",
		"HANDOFF_HANDOVER=/tmp/h.sock",
		"TABLEFLIP_HAS_PARENT_7DIU3=yes",
		"HANDOFF_ADOPT_FD=9,unlink",
		"HANDOFF_API_KEY=secret",
		"HANDOFF_WORKERS_EXTRA=keep",
		"MY_LISTEN_FDS=keep",
		"NOTIFY_SOCKET_OTHER=keep",
		"EMPTY=",
		"NOEQUALS",
	}
	want := []string{
		"PATH=/usr/bin",
		"HOME=/root",
		"HANDOFF_API_KEY=secret",
		"HANDOFF_WORKERS_EXTRA=keep",
		"MY_LISTEN_FDS=keep",
		"NOTIFY_SOCKET_OTHER=keep",
		"EMPTY=",
		"NOEQUALS",
	}
	if got := shim.WorkerEnv(in); !slices.Equal(got, want) {
		t.Fatalf("shim.WorkerEnv:\n got %q\nwant %q", got, want)
	}
	// The runtime's own variables are in shim's list too.
	for _, k := range []string{envHandover, EnvStandalone} {
		if !shim.PrimaryOnly(k) {
			t.Errorf("%s reaches the workers", k)
		}
	}
}
