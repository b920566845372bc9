//go:build linux

package integration

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestStartupMistakes: each mistake at start-up prints exactly one line
// beginning "handoff: " on stderr, exits non-zero and leaves no process.
func TestStartupMistakes(t *testing.T) {
	t.Parallel()
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { busy.Close() })

	cases := []struct {
		name string
		// args get DIR substituted with the case's directory, which holds
		// an executable "server" and a non-executable "notexec".
		args []string
		// want is what the line must say: the problem, by name.
		want string
	}{
		{"unknown flag", []string{"run", "--bogus", "--listen", "127.0.0.1:0", "--", "DIR/server"}, "unknown flag --bogus"},
		{"bad address", []string{"run", "--listen", "nope", "--", "DIR/server"}, `--listen "nope"`},
		{"port in use", []string{"run", "--listen", busy.Addr().String(), "--", "DIR/server"}, busy.Addr().String() + ": address already in use"},
		// The unix socket bound first goes with the failed start.
		{"port in use after a unix listener", []string{"run", "--listen", "unix:DIR/a.sock", "--listen", busy.Addr().String(), "--", "DIR/server"}, busy.Addr().String() + ": address already in use"},
		{"command missing", []string{"run", "--listen", "127.0.0.1:0", "--", "DIR/no-such-server"}, "no-such-server"},
		{"command not executable", []string{"run", "--listen", "127.0.0.1:0", "--", "DIR/notexec"}, "not executable"},
		{"no command after --", []string{"run", "--listen", "127.0.0.1:0", "--"}, "no worker command"},
		{"no command at all", []string{"run", "--listen", "127.0.0.1:0"}, "no worker command"},
		{"pid file directory missing", []string{"run", "--pid-file", "DIR/nope/handoff.pid", "--listen", "127.0.0.1:0", "--", "DIR/server"}, "DIR/nope does not exist"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			bin := filepath.Join(dir, "handoff")
			if err := copyFile(handoffBin, bin, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := copyFile(servers["v1"], filepath.Join(dir, "server"), 0o755); err != nil {
				t.Fatal(err)
			}
			writeBytes(t, filepath.Join(dir, "notexec"), []byte("#!/bin/sh\necho hi\n"), 0o644)
			var args []string
			for _, a := range c.args {
				args = append(args, strings.ReplaceAll(a, "DIR", dir))
			}
			mark := newMark(t)
			outF, err := os.Create(filepath.Join(dir, "stdout"))
			if err != nil {
				t.Fatal(err)
			}
			errF, err := os.Create(filepath.Join(dir, "stderr"))
			if err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(bin, args...)
			cmd.Dir = dir
			cmd.Env = append(os.Environ(), markEnv+"="+mark)
			cmd.Stdout, cmd.Stderr = outF, errF
			if cmd, err = startCmd(cmd); err != nil {
				t.Fatal(err)
			}
			outF.Close()
			errF.Close()
			t.Cleanup(func() {
				for _, pid := range append(markedPIDs(mark), descendants(cmd.Process.Pid)...) {
					signalOurs(pid, syscall.SIGKILL, mark, dir)
				}
			})
			waited := make(chan error, 1)
			go func() { waited <- cmd.Wait() }()
			select {
			case <-waited:
			case <-time.After(15 * time.Second):
				signalOurs(cmd.Process.Pid, syscall.SIGKILL, mark, dir)
				<-waited
				stderr, _ := os.ReadFile(filepath.Join(dir, "stderr"))
				t.Fatalf("handoff %s still running after 15s; stderr:\n%s", strings.Join(args, " "), stderr)
			}
			code := cmd.ProcessState.ExitCode()
			stderr, _ := os.ReadFile(filepath.Join(dir, "stderr"))
			var lines []string
			for _, l := range strings.Split(string(stderr), "\n") {
				if strings.TrimSpace(l) != "" {
					lines = append(lines, l)
				}
			}
			t.Logf("exit %d, stderr %q", code, stderr)
			if code == 0 {
				t.Errorf("exit status 0, want non-zero")
			}
			if len(lines) != 1 || !strings.HasPrefix(lines[0], "handoff: ") {
				t.Errorf("stderr is %d lines, want exactly one beginning \"handoff: \":\n%s", len(lines), stderr)
			} else if want := strings.ReplaceAll(c.want, "DIR", dir); !strings.Contains(lines[0], want) {
				t.Errorf("stderr %q does not name the problem (%q)", lines[0], want)
			}
			if left := waitGone(markedPIDs(mark), 3*time.Second); len(left) > 0 {
				t.Errorf("processes left running: %v", left)
			}
			entries, _ := os.ReadDir(dir)
			for _, e := range entries {
				if e.Type()&os.ModeSocket != 0 {
					t.Errorf("socket file left behind: %s", e.Name())
				}
			}
		})
	}
}
