package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/handoff-dev/handoff/runtime"
)

// Bad input to 'handoff dev' stops it at start, before any build: one
// line, a non-zero exit.
func TestDevBadInput(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	base := []string{"dev", "--listen", "127.0.0.1:0"}
	for _, c := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no build, no executable", []string{"--", "./bin/server"}, 1, "./bin/server: not found: put the server's executable after --, or give --build"},
		{"empty build", []string{"--build", " ", "--", "./bin/server"}, exitUsage, "--build is empty"},
		{"no command", []string{"--build", "go build"}, exitUsage, "no worker command: put it after --, e.g. handoff dev"},
		{"bad include", []string{"--build", "go build", "--include", "[a-", "--", "./bin/server"}, exitUsage, `glob "[a-" does not parse`},
		{"bad exclude", []string{"--build", "go build", "--exclude", "\\", "--", "./bin/server"}, exitUsage, `glob "\\" does not parse`},
		{"empty watch path", []string{"--build", "go build", "--watch-path", "", "--", "./bin/server"}, exitUsage, "--watch-path needs a file or directory"},
		{"unknown flag", []string{"--build", "go build", "--watch", "--", "./bin/server"}, exitUsage, "unknown flag --watch: see 'handoff dev --help'"},
		{"missing watch path", []string{"--build", "go build", "--watch-path", missing, "--", "./bin/server"}, 1, "--watch-path " + missing + ": no such file or directory"},
		{"build not found", []string{"--build", "no-such-compiler-xyz build", "--", "./bin/server"}, 1, "no-such-compiler-xyz is not found in PATH"},
		{"build does not parse", []string{"--build", "go build (", "--", "./bin/server"}, 1, "does not parse"},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, stdout, stderr := runArgs(append(append([]string(nil), base...), c.args...)...)
			if code != c.code || stdout != "" {
				t.Errorf("exit %d (want %d) stdout %q", code, c.code, stdout)
			}
			if !strings.HasPrefix(stderr, "handoff: ") || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, c.want) {
				t.Errorf("stderr %q, want one 'handoff: ' line saying %q", stderr, c.want)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "bin")); err == nil {
		t.Errorf("a build ran")
	}
}

func TestDevHelp(t *testing.T) {
	code, stdout, stderr := runArgs("dev", "--help")
	if code != 0 || stderr != "" || strings.Contains(stdout, "%!") {
		t.Fatalf("exit %d stderr %q stdout %q", code, stderr, stdout)
	}
	for _, f := range []string{"--build CMD", "--watch-path PATH", "--include GLOB", "--exclude GLOB", "--workers N"} {
		if !strings.Contains(stdout, "  "+f) {
			t.Errorf("help does not mention %s", f)
		}
	}
	if _, stdout, _ := runArgs("help"); !strings.Contains(stdout, "handoff dev") {
		t.Errorf("top help does not mention handoff dev")
	}
}

func TestParseDevDefaults(t *testing.T) {
	cfg, _, dc, err := parseDev([]string{"--listen", ":0", "--build", "go build -o bin/s .", "--", "./bin/s"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Workers != 1 || cfg.Watch {
		t.Errorf("config %+v", cfg)
	}
	if strings.Join(dc.paths, " ") != "." || strings.Join(dc.include, " ") != "*.go go.mod go.sum" ||
		strings.Join(dc.exclude, " ") != ".git vendor node_modules .venv __pycache__ *.swp *.swo *.swx *~ .#* #*# 4913 *.tmp" {
		t.Errorf("dev config %+v", dc)
	}
	_, _, dc, err = parseDev([]string{"--listen", ":0", "--build", "make", "--watch-path", "src", "--include", "*.rs",
		"--exclude", "target", "--workers", "3", "--", "./bin/s"}, &bytes.Buffer{})
	if err != nil || strings.Join(dc.paths, " ") != "src" || strings.Join(dc.include, " ") != "*.rs" ||
		strings.Join(dc.exclude, " ") != ".git vendor node_modules .venv __pycache__ *.swp *.swo *.swx *~ .#* #*# 4913 *.tmp target" {
		t.Errorf("dev config %+v %v", dc, err)
	}
}

// The console of 'handoff dev': one line per build and per rollout, the
// compiler's output indented under a failed build, worker chatter left out.
func TestDevConsole(t *testing.T) {
	var buf bytes.Buffer
	log, err := newDevLogger(logConfig{"console", "info"}, lockedWriter(&buf))
	if err != nil {
		t.Fatal(err)
	}
	log = log.With(zap.Int("primary", 42))
	log.Info("build finished", zap.Duration("duration", 1234*time.Millisecond), zap.Bool("changed", true))
	log.Info("worker spawned", zap.Int("slot", 0))
	log.Info("upgrade started", zap.Int("generation", 2))
	log.Info("upgrade took over", zap.Int("generation", 2), zap.Duration("duration", 15*time.Millisecond))
	log.Info("upgrade finished", zap.Int("generation", 2), zap.Duration("duration", 15*time.Millisecond),
		zap.Duration("took_over", 15*time.Millisecond))
	log.Info("upgrade took over", zap.Int("generation", 3), zap.Duration("duration", 312*time.Millisecond),
		zap.Duration("probation", 5*time.Second))
	log.Info("upgrade finished", zap.Int("generation", 3), zap.Duration("duration", 5312*time.Millisecond),
		zap.Duration("took_over", 312*time.Millisecond))
	log.Info("upgrade finished", zap.Int("generation", 4), zap.Duration("duration", 1200*time.Millisecond),
		zap.Duration("took_over", 300*time.Millisecond), zap.String("probation", "ended by a newer deploy"))
	log.Error("build failed", zap.Duration("duration", 400*time.Millisecond), zap.String("reason", "exit status 1"),
		zap.String("output", "# example.com/x\n./main.go:3:1: syntax error\n"))
	log.Info("build finished", zap.Duration("duration", 300*time.Millisecond), zap.Bool("changed", false))
	log.Warn("file watch error", zap.String("error", "overflow"))
	log.Warn("upgrade rolling back", zap.Int("generation", 3), zap.String("reason", "worker 0 (pid 7) exited"))
	log.Error("upgrade rolled back", zap.Int("generation", 3), zap.String("reason", "worker 0 (pid 7) exited 1s after it was ready"),
		zap.Int("to", 2), zap.String("stderr", "panic: nil map\n"))
	var lines []string
	for _, l := range strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n") {
		if len(l) > 9 && l[2] == ':' && l[5] == ':' {
			l = l[9:] // the time
		}
		lines = append(lines, l)
	}
	want := []string{
		"build ok in 1.23s",
		"rollout ok: generation 2 in 15ms",
		"rollout: generation 3 serving in 312ms, on probation for 5s",
		"rollout ok: generation 3 took over in 312ms, passed probation at 5.31s",
		"rollout ok: generation 4 took over in 300ms, probation ended by a newer deploy at 1.2s",
		"build failed in 400ms",
		"    # example.com/x",
		"    ./main.go:3:1: syntax error",
		"build ok in 300ms, executable unchanged: nothing to roll out",
		"WARN file watch error error=overflow",
		"rollout rolled back: generation 3: worker 0 (pid 7) exited 1s after it was ready; generation 2 serving",
		"    panic: nil map",
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("console:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
	if _, err := newDevLogger(logConfig{"console", "loud"}, lockedWriter(&buf)); err == nil {
		t.Errorf("a bad level is accepted")
	}
}

// Without --build, what is watched follows from what COMMAND runs.
func TestParseDevNoBuild(t *testing.T) {
	for _, c := range []struct {
		command []string
		include string
	}{
		{[]string{"node", "server.js"}, "*.js *.mjs *.cjs *.json"},
		{[]string{"/usr/bin/node", "server.js"}, "*.js *.mjs *.cjs *.json"},
		{[]string{"npm", "start"}, "*.js *.mjs *.cjs *.json"},
		{[]string{"env", "NODE_ENV=development", "node", "app.mjs"}, "*.js *.mjs *.cjs *.json"},
		{[]string{"./server.js"}, "*.js *.mjs *.cjs *.json"},
		{[]string{"tsx", "server.ts"}, "*.js *.mjs *.cjs *.json *.ts *.mts *.cts *.tsx *.jsx"},
		{[]string{"python3", "app.py"}, "*.py"},
		{[]string{"python3.12", "-m", "http.server"}, "*.py"},
		{[]string{"uvicorn", "app:app", "--fd", "3"}, "*.py"},
		{[]string{"gunicorn", "app:app"}, "*.py"},
		{[]string{"bundle", "exec", "puma"}, "*.rb *.ru"},
		{[]string{"ruby", "app.rb"}, "*.rb *.ru"},
		{[]string{"./bin/server"}, ""},
	} {
		_, _, dc, err := parseDev(append([]string{"--listen", ":0", "--"}, c.command...), &bytes.Buffer{})
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(dc.include, " "); got != c.include || dc.exe != (c.include == "") {
			t.Errorf("%q: include %q exe %v, want %q", c.command, got, dc.exe, c.include)
		}
		if dc.build != "" || (c.include != "" && strings.Join(dc.paths, " ") != ".") || (c.include == "" && len(dc.paths) != 0) {
			t.Errorf("%q: %+v", c.command, dc)
		}
	}
	// --include replaces the default, also for a command of no known kind.
	_, _, dc, err := parseDev([]string{"--listen", ":0", "--include", "*.lua", "--", "./server"}, &bytes.Buffer{})
	if err != nil || strings.Join(dc.include, " ") != "*.lua" || dc.exe || strings.Join(dc.paths, " ") != "." {
		t.Errorf("--include *.lua: %+v %v", dc, err)
	}
}

func TestDevConsoleNoBuild(t *testing.T) {
	var buf bytes.Buffer
	log, err := newDevLogger(logConfig{"console", "info"}, lockedWriter(&buf))
	if err != nil {
		t.Fatal(err)
	}
	log.Info("dev watching", zap.String("paths", "."), zap.String("include", "*.js *.mjs"), zap.String("build", ""),
		zap.String("command", "node server.js"), zap.String("ready", "bind (or READY=1; else after 1s)"))
	log.Info("change detected", zap.String("paths", "/app/server.js"))
	for _, want := range []string{"watching . (*.js *.mjs); serve: node server.js; ready: bind (or READY=1; else after 1s); every change rolls out\n",
		"changed: /app/server.js\n"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("console %q does not say %q", buf.String(), want)
		}
	}
}

// Without --ready, dev's workers are ready as they bind their port where
// binds are adopted (else after a second, for one that says nothing),
// and after a second where they are not; a --ready given wins.
func TestDevReadiness(t *testing.T) {
	probe := probeAdoption
	t.Cleanup(func() { probeAdoption = probe })
	for _, c := range []struct {
		args  []string
		probe error
		mode  runtime.ReadyMode
		delay time.Duration
		says  string
	}{
		{nil, nil, runtime.ReadyBind, time.Second, "bind (or READY=1; else after 1s)"},
		{nil, errors.New("seccomp: operation not permitted"), runtime.ReadyDelay, time.Second,
			"delay:1s (bind adoption off: seccomp: operation not permitted)"},
		{[]string{"--adopt-bind", "off"}, nil, runtime.ReadyDelay, time.Second, "delay:1s (bind adoption off: --adopt-bind off)"},
		{[]string{"--ready", "notify"}, nil, runtime.ReadyNotify, 0, "notify"},
		{[]string{"--ready", "delay:2s"}, nil, runtime.ReadyDelay, 2 * time.Second, "delay:2s"},
	} {
		probed := false
		probeAdoption = func() error { probed = true; return c.probe }
		args := append(append([]string{"--listen", ":0"}, c.args...), "--", "node", "server.js")
		cfg, _, dc, err := parseDev(args, &bytes.Buffer{})
		if err != nil {
			t.Fatalf("%v: %v", c.args, err)
		}
		says := dc.ready
		if says == "" {
			says = devReadiness(&cfg)
		}
		if cfg.Ready != c.mode || cfg.ReadyDelay != c.delay || says != c.says {
			t.Errorf("%v: ready %v, delay %v, %q; want %v, %v, %q", c.args, cfg.Ready, cfg.ReadyDelay, says, c.mode, c.delay, c.says)
		}
		if dc.ready != "" && probed {
			t.Errorf("%v: probed bind adoption for an explicit --ready", c.args)
		}
	}
}
