package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/internal/control"
	"github.com/handoff-dev/handoff/runtime"
)

// fakePrimary answers one control request with rep and sends the request
// it got on the returned channel.
func fakePrimary(t *testing.T, rep control.Reply) (string, <-chan control.Request) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "control.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan control.Request, 1)
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		line, _ := bufio.NewReader(c).ReadBytes('\n')
		var req control.Request
		json.Unmarshal(line, &req)
		got <- req
		b, _ := json.Marshal(rep)
		c.Write(append(b, '\n'))
	}()
	return path, got
}

// handoff rollback asks for the op rollback and reports its outcome in one
// line, as handoff reload does: done (exit 0), refused or aborted (exit 1).
func TestRollbackCommand(t *testing.T) {
	for _, c := range []struct {
		name         string
		rep          control.Reply
		code         int
		stdout, line string
	}{
		{"done", control.Reply{OK: true, Pid: 42, Generation: 4, Message: "done: generation 4 serving"}, 0,
			"rollback done: generation 4 serving (primary 42)\n", ""},
		{"refused", control.Reply{Pid: 42, Error: "refused: no previous generation to roll back to"}, 1,
			"", "handoff: rollback refused: no previous generation to roll back to\n"},
		{"aborted", control.Reply{Pid: 42, Error: "aborted: worker 0 (pid 7) exited at start: exit status 1"}, 1,
			"", "handoff: rollback aborted: worker 0 (pid 7) exited at start: exit status 1\n"},
		{"rolled back", control.Reply{Pid: 42, Error: "rolled back: worker 1 (pid 8) exited 2s after it was ready; generation 3 serving"}, 1,
			"", "handoff: rollback rolled back: worker 1 (pid 8) exited 2s after it was ready; generation 3 serving\n"},
		{"other refusal", control.Reply{Pid: 42, Error: "the primary is shutting down"}, 1,
			"", "handoff: the primary is shutting down\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			path, got := fakePrimary(t, c.rep)
			code, stdout, stderr := runArgs("rollback", "--control", path)
			if req := <-got; req != (control.Request{Op: "rollback"}) {
				t.Errorf("request %+v", req)
			}
			if code != c.code || stdout != c.stdout || stderr != c.line {
				t.Errorf("exit %d, stdout %q, stderr %q; want %d, %q, %q", code, stdout, stderr, c.code, c.stdout, c.line)
			}
		})
	}
}

func TestRollbackUsage(t *testing.T) {
	code, stdout, stderr := runArgs("rollback", "--help")
	if code != 0 || stderr != "" || !strings.HasPrefix(stdout, "Usage: handoff rollback [--control PATH]") {
		t.Errorf("rollback --help: exit %d %q %q", code, stdout, stderr)
	}
	for _, args := range [][]string{{"rollback", "now"}, {"rollback", "--bogus"}, {"rollback", "--control"}} {
		code, stdout, stderr := runArgs(args...)
		if code != exitUsage || stdout != "" || !strings.HasPrefix(stderr, "handoff: ") || strings.Count(stderr, "\n") != 1 {
			t.Errorf("%q: exit %d stdout %q stderr %q, want one usage line", args, code, stdout, stderr)
		}
	}
	if _, stdout, _ := runArgs("help"); !strings.Contains(stdout, "handoff rollback [--control PATH]") {
		t.Errorf("handoff help does not list rollback:\n%s", stdout)
	}
}

func TestStatusShowsGenerations(t *testing.T) {
	mtime := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	st := &runtime.Status{Primary: runtime.PrimaryStatus{Pid: 1, Generation: 3, Workers: 1},
		Generations: runtime.GenerationsStatus{
			Current: &runtime.GenerationStatus{Generation: 3, Path: "/srv/app/releases/41/server", Size: 12 << 20,
				ModTime: mtime, SHA256: "0123456789abcdef0123", RollbackOf: 1},
			Previous: &runtime.GenerationStatus{Generation: 2, Path: "/srv/app/releases/42/server"},
		}}
	var b bytes.Buffer
	printStatus(&b, st)
	want := "current  generation 3: /srv/app/releases/41/server, 12.0MiB, modified " + mtime.Local().Format("2006-01-02 15:04:05") +
		", sha256 0123456789ab (rollback to generation 1)\nprevious generation 2: /srv/app/releases/42/server\n"
	if !strings.Contains(b.String(), want) {
		t.Errorf("status:\n%s\nwant the lines\n%s", b.String(), want)
	}
	st.Generations.Previous = nil
	b.Reset()
	printStatus(&b, st)
	if !strings.Contains(b.String(), "\nprevious none (nothing to roll back to)\n") {
		t.Errorf("status without a previous generation:\n%s", b.String())
	}
	st.Generations.Current = nil
	b.Reset()
	printStatus(&b, st)
	if strings.Contains(b.String(), "current") || strings.Contains(b.String(), "previous") {
		t.Errorf("status before the first workers:\n%s", b.String())
	}
}

func TestMinUptimeFlag(t *testing.T) {
	for _, c := range []struct {
		args []string
		want time.Duration
	}{
		{nil, runtime.DefaultMinUptime},
		{[]string{"--min-uptime", "30s"}, 30 * time.Second},
		{[]string{"--min-uptime", "0"}, -1},
		{[]string{"--min-uptime", "0s"}, -1},
	} {
		cfg, _, err := parseRun(append(append([]string{"--listen", "127.0.0.1:0"}, c.args...), "--", "true"), &bytes.Buffer{})
		if err != nil || cfg.MinUptime != c.want {
			t.Errorf("%q: MinUptime %v, %v; want %v", c.args, cfg.MinUptime, err, c.want)
		}
	}
	for arg, want := range map[string]string{
		"-1s":  "--min-uptime -1s: must be 0 (no probation) or more",
		"soon": `--min-uptime "soon": not a valid value`,
	} {
		code, stdout, stderr := runArgs("run", "--listen", "127.0.0.1:0", "--min-uptime", arg, "--", "true")
		if code != exitUsage || stdout != "" || !strings.HasPrefix(stderr, "handoff: ") || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, want) {
			t.Errorf("--min-uptime %s: exit %d stderr %q, want one line saying %q", arg, code, stderr, want)
		}
	}
	if _, stdout, _ := runArgs("run", "--help"); !strings.Contains(stdout, "  --min-uptime DURATION ") {
		t.Error("run --help does not mention --min-uptime")
	}
	// handoff dev takes it too.
	cfg, _, _, err := parseDev([]string{"--listen", "127.0.0.1:0", "--build", "true", "--min-uptime", "2s", "--", "true"}, &bytes.Buffer{})
	if err != nil || cfg.MinUptime != 2*time.Second {
		t.Errorf("dev --min-uptime 2s: %v, %v", cfg.MinUptime, err)
	}
}

// handoff reload reports a deploy rolled back after its probation in one
// line, exit 1.
func TestReloadRolledBack(t *testing.T) {
	path, got := fakePrimary(t, control.Reply{Pid: 42, Error: "rolled back: worker 0 (pid 9) exited 2s after it was ready; generation 3 serving"})
	code, stdout, stderr := runArgs("reload", "--control", path)
	if req := <-got; req.Op != "reload" {
		t.Errorf("request %+v", req)
	}
	if want := "handoff: reload rolled back: worker 0 (pid 9) exited 2s after it was ready; generation 3 serving\n"; code != 1 || stdout != "" || stderr != want {
		t.Errorf("exit %d, stdout %q, stderr %q; want 1 and %q", code, stdout, stderr, want)
	}
}
