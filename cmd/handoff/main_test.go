package main

import (
	"bytes"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/internal/testutil"

	"github.com/handoff-dev/handoff/internal/shim"
	"github.com/handoff-dev/handoff/runtime"
)

// None of these tests should start a primary. Should one do so by mistake,
// its workers (this test binary through /proc/self/exe) must act as the
// shim rather than run the tests again, and the TERM queued by runArgs
// stops it as soon as it starts.
func TestMain(m *testing.M) {
	shim.Main()
	os.Exit(m.Run())
}

func runArgs(args ...string) (code int, stdout, stderr string) {
	var out, errb testutil.SyncBuffer
	sigs := make(chan os.Signal, 1)
	sigs <- syscall.SIGTERM
	code = run(args, sigs, &out, &errb)
	return code, out.String(), errb.String()
}

func TestUsageErrors(t *testing.T) {
	ok := []string{"--listen", "127.0.0.1:0"}
	for _, c := range []struct {
		name string
		args []string
		want string // a substring of the one line
	}{
		{"unknown command", []string{"serve"}, `unknown command "serve"`},
		{"unknown flag", []string{"run", "--bogus", "--listen", ":0", "--", "true"}, "unknown flag --bogus"},
		{"same address twice", []string{"run", "--listen", "a=127.0.0.1:9", "--listen", "b=127.0.0.1:9", "--", "true"}, "--listen 127.0.0.1:9 is given twice"},
		{"empty command", []string{"run", "--listen", ":0", "--", ""}, "no worker command"},
		{"flag without value", []string{"run", "--listen"}, "--listen needs a value"},
		{"missing command", []string{"run", "--listen", ":0"}, "no worker command"},
		{"missing command after --", []string{"run", "--listen", ":0", "--"}, "no worker command"},
		{"no listen", []string{"run", "--", "true"}, "no --listen given"},
		{"bad listen", []string{"run", "--listen", "8080", "--", "true"}, `--listen "8080": not HOST:PORT`},
		{"bad listen port", []string{"run", "--listen", ":70000", "--", "true"}, `port "70000"`},
		{"bad listen name", []string{"run", "--listen", "=:80", "--", "true"}, "the name before '='"},
		{"second listen bad", []string{"run", "--listen", ":0", "--listen", "unix:", "--", "true"}, "unix: needs a socket path"},
		{"bad ready", []string{"run", "--listen", ":0", "--ready", "systemd", "--", "true"}, `--ready "systemd": use notify, bind, delay:DURATION (e.g. delay:1s) or http:PATH`},
		{"ready http shared", []string{"run", "--listen", ":0", "--balance", "shared", "--ready", "http:/healthz", "--", "true"}, "--ready http:/healthz needs a socket per worker"},
		{"ready https unix", []string{"run", "--listen", "unix:/tmp/h.sock", "--ready", "https:/up", "--", "true"}, "--ready https:/up needs a socket per worker"},
		{"ready http no path", []string{"run", "--listen", ":0", "--ready", "http:healthz", "--", "true"}, "PATH starting with /"},
		{"health shared", []string{"run", "--listen", ":0", "--balance", "shared", "--health", "http:/healthz", "--", "true"}, "--health http:/healthz needs a socket per worker"},
		{"zero ready interval", []string{"run", "--listen", ":0", "--ready", "http:/", "--ready-interval", "0s", "--", "true"}, "--ready-interval 0s: must be positive"},
		{"ready interval alone", []string{"run", "--listen", ":0", "--ready-interval", "1s", "--", "true"}, "--ready-interval without --ready http:PATH"},
		{"ready host alone", []string{"run", "--listen", ":0", "--ready-host", "api", "--", "true"}, "--ready-host without an HTTP probe"},
		{"bad ready host", []string{"run", "--listen", ":0", "--ready", "http:/", "--ready-host", "a b", "--", "true"}, `--ready-host "a b"`},
		{"bad health", []string{"run", "--listen", ":0", "--health", "tcp:80", "--", "true"}, `--health "tcp:80": use http:PATH`},
		{"health interval alone", []string{"run", "--listen", ":0", "--health-interval", "5s", "--", "true"}, "--health-interval without --health"},
		{"zero health threshold", []string{"run", "--listen", ":0", "--health-threshold", "0", "--", "true"}, "--health-threshold 0: must be at least 1"},
		{"zero surge", []string{"run", "--listen", ":0", "--surge", "0", "--", "true"}, "--surge 0: must be at least 1"},
		{"standby shared", []string{"run", "--listen", ":0", "--balance", "shared", "--standby", "--", "true"}, "--standby needs a socket per worker"},
		{"standby unix", []string{"run", "--listen", "unix:/tmp/h.sock", "--standby", "--", "true"}, "--standby needs a socket per worker"},
		{"bad surge", []string{"run", "--listen", ":0", "--surge", "many", "--", "true"}, `--surge "many": not a valid value`},
		{"bad ready delay", []string{"run", "--listen", ":0", "--ready", "delay:soon", "--", "true"}, "the delay must be a positive duration"},
		{"zero ready delay", []string{"run", "--listen", ":0", "--ready", "delay:0s", "--", "true"}, "the delay must be a positive duration"},
		{"ready delay too long", []string{"run", "--listen", ":0", "--ready", "delay:2m", "--", "true"}, "is not shorter than --ready-timeout"},
		{"bad ready-timeout", []string{"run", "--listen", ":0", "--ready-timeout", "10", "--", "true"}, `--ready-timeout "10": not a valid value`},
		{"zero ready-timeout", []string{"run", "--listen", ":0", "--ready-timeout", "0s", "--", "true"}, "--ready-timeout 0s: must be positive"},
		{"negative drain-timeout", []string{"run", "--listen", ":0", "--drain-timeout", "-1s", "--", "true"}, "--drain-timeout -1s: must be positive"},
		{"bad drain-timeout", []string{"run", "--listen", ":0", "--drain-timeout", "forever", "--", "true"}, `--drain-timeout "forever": not a valid value`},
		{"workers 0", []string{"run", "--listen", ":0", "--workers", "0", "--", "true"}, "--workers 0: must be at least 1"},
		{"workers -1", []string{"run", "--listen", ":0", "--workers", "-1", "--", "true"}, "--workers -1: must be at least 1"},
		{"workers too many", []string{"run", "--listen", ":0", "--workers", "5000", "--", "true"}, "--workers 5000: at most 1024"},
		{"control path too long", []string{"run", "--listen", ":0", "--control", "/" + strings.Repeat("c", 120), "--", "true"}, "at most 107 bytes"},
		{"scale without a number", []string{"scale"}, "scale needs one number"},
		{"scale zero", []string{"scale", "0"}, "scale 0: the number of workers must be from 1 to 1024"},
		{"scale by zero", []string{"scale", "+0"}, "scale +0: the change must be"},
		{"status with an argument", []string{"status", "x"}, "status takes no arguments"},
		{"status unknown flag", []string{"status", "--bogus"}, "unknown flag --bogus: see 'handoff status --help'"},
		{"reload flag without value", []string{"reload", "--control"}, "--control needs a value: see 'handoff reload --help'"},
		{"workers not a number", []string{"run", "--listen", ":0", "--workers", "two", "--", "true"}, `--workers "two": not a valid value`},
		{"unknown stop signal", []string{"run", "--listen", ":0", "--stop-signal", "BOGUS", "--", "true"}, "--stop-signal BOGUS: unknown signal"},
		{"stop signal 0", []string{"run", "--listen", ":0", "--stop-signal", "0", "--", "true"}, "not a signal number"},
		{"stop signal 65", []string{"run", "--listen", ":0", "--stop-signal", "65", "--", "true"}, "not a signal number"},
		{"stop signal KILL", []string{"run", "--listen", ":0", "--stop-signal", "KILL", "--", "true"}, "a worker cannot catch it"},
		{"stop signal SIGKILL", []string{"run", "--listen", ":0", "--stop-signal", "SIGKILL", "--", "true"}, "a worker cannot catch it"},
		{"stop signal 9", []string{"run", "--listen", ":0", "--stop-signal", "9", "--", "true"}, "a worker cannot catch it"},
		{"stop signal STOP", []string{"run", "--listen", ":0", "--stop-signal", "stop", "--", "true"}, "a worker cannot catch it"},
		{"stop signal 19", []string{"run", "--listen", ":0", "--stop-signal", "19", "--", "true"}, "a worker cannot catch it"},
		{"bad log format", append(append([]string{"run"}, ok...), "--log-format", "xml", "--", "true"), `--log-format "xml": use console or json`},
		{"bad log level", append(append([]string{"run"}, ok...), "--log-level", "verbose", "--", "true"), `--log-level "verbose"`},
		{"log level above error", append(append([]string{"run"}, ok...), "--log-level", "fatal", "--", "true"), `--log-level "fatal"`},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, stdout, stderr := runArgs(c.args...)
			if code != exitUsage {
				t.Errorf("exit %d, want %d", code, exitUsage)
			}
			if stdout != "" {
				t.Errorf("stdout %q", stdout)
			}
			if !strings.HasPrefix(stderr, "handoff: ") || !strings.HasSuffix(stderr, "\n") || strings.Count(stderr, "\n") != 1 {
				t.Errorf("stderr %q is not one line starting 'handoff: '", stderr)
			}
			if !strings.Contains(stderr, c.want) {
				t.Errorf("stderr %q does not say %q", stderr, c.want)
			}
		})
	}
}

func TestNoArgsPrintsUsage(t *testing.T) {
	code, stdout, stderr := runArgs()
	if code != exitUsage || stdout != "" || !strings.Contains(stderr, "handoff run [flags] -- COMMAND") {
		t.Fatalf("exit %d stdout %q stderr %q", code, stdout, stderr)
	}
}

func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"run", "--help"}, {"run", "-h"}, {"run", "--listen", ":0", "--help", "--", "true"}} {
		code, stdout, stderr := runArgs(args...)
		if code != 0 || stderr != "" {
			t.Fatalf("%q: exit %d stderr %q", args, code, stderr)
		}
		for _, flag := range []string{"--listen", "--workers", "--ready", "--ready-timeout", "--drain-timeout",
			"--stop-signal", "--pid-file", "--ipc", "--log-format", "--log-level"} {
			if !strings.Contains(stdout, "  "+flag+" ") {
				t.Errorf("%q: help does not mention %s", args, flag)
			}
		}
		if strings.Contains(stdout, "%!") {
			t.Errorf("help has a formatting error: %q", stdout)
		}
	}
	for _, args := range [][]string{{"help"}, {"--help"}, {"-h"}} {
		if code, stdout, _ := runArgs(args...); code != 0 || !strings.Contains(stdout, "handoff run [flags]") {
			t.Errorf("%q: exit %d stdout %q", args, code, stdout)
		}
	}
	if code, stdout, _ := runArgs("version"); code != 0 || stdout != "handoff "+version+"\n" {
		t.Errorf("version: exit %d %q", code, stdout)
	}
}

func TestParseRunValues(t *testing.T) {
	cfg, lc, err := parseRun([]string{
		"--listen", "web=127.0.0.1:0", "--listen", "unix:/tmp/x.sock",
		"--workers", "3", "--ready", "notify", "--ready-timeout", "5s", "--drain-timeout", "2s",
		"--stop-signal", "10", "--pid-file", "/run/h.pid", "--log-format", "json", "--log-level", "debug",
		"--ipc", "--", "./server", "--port", "1",
	}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	want := []runtime.Listener{{Name: "web", Network: "tcp", Address: "127.0.0.1:0"}, {Name: "listener1", Network: "unix", Address: "/tmp/x.sock"}}
	if len(cfg.Listeners) != 2 || cfg.Listeners[0] != want[0] || cfg.Listeners[1] != want[1] {
		t.Errorf("listeners %+v", cfg.Listeners)
	}
	if cfg.Workers != 3 || cfg.Ready != runtime.ReadyNotify || cfg.ReadyTimeout != 5*time.Second ||
		cfg.DrainTimeout != 2*time.Second || cfg.StopSignal != syscall.SIGUSR1 || cfg.PIDFile != "/run/h.pid" || !cfg.IPC {
		t.Errorf("config %+v", cfg)
	}
	if strings.Join(cfg.Command, " ") != "./server --port 1" || lc != (logConfig{"json", "debug"}) {
		t.Errorf("command %q log %+v", cfg.Command, lc)
	}

	cfg, lc, err = parseRun([]string{"--listen", ":0", "--", "true"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Workers != 0 || cfg.Ready != runtime.ReadyDelay || cfg.ReadyDelay != time.Second ||
		cfg.ReadyTimeout != runtime.DefaultReadyTimeout || cfg.DrainTimeout != runtime.DefaultDrainTimeout ||
		cfg.StopSignal != syscall.SIGTERM || cfg.IPC || lc != (logConfig{"console", "info"}) {
		t.Errorf("defaults %+v %+v", cfg, lc)
	}
}

func TestParseSignal(t *testing.T) {
	for in, want := range map[string]syscall.Signal{
		"TERM": syscall.SIGTERM, "SIGTERM": syscall.SIGTERM, "term": syscall.SIGTERM, "sigterm": syscall.SIGTERM,
		"15": syscall.SIGTERM, "INT": syscall.SIGINT, "quit": syscall.SIGQUIT, "USR1": syscall.SIGUSR1,
		"SIGUSR2": syscall.SIGUSR2, "winch": syscall.SIGWINCH, "2": syscall.SIGINT, "64": syscall.Signal(64),
	} {
		if got, err := parseSignal(in); err != nil || got != want {
			t.Errorf("parseSignal(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "KILL", "SIGKILL", "kill", "9", "STOP", "19", "0", "-15", "65", "SIG", "TERMINATE", "15s", "SIGSIGTERM"} {
		if got, err := parseSignal(in); err == nil {
			t.Errorf("parseSignal(%q) = %v, want an error", in, got)
		}
	}
}

// Where there is no primary (not Linux), run and dev say so in one line
// and exit 1, before reading a flag; the other commands go on.
func TestRunNeedsLinux(t *testing.T) {
	defer func(g string) { goos = g }(goos)
	goos = "darwin"
	for _, cmd := range []string{"run", "dev"} {
		code, stdout, stderr := runArgs(cmd, "--listen", "127.0.0.1:0", "--", "/bin/true")
		want := "handoff: handoff " + cmd + " needs Linux ("
		if code != 1 || stdout != "" || !strings.HasPrefix(stderr, want) || strings.Count(stderr, "\n") != 1 ||
			!strings.Contains(stderr, "this is darwin") {
			t.Errorf("handoff %s on darwin: exit %d, stdout %q, stderr %q; want exit 1 and one line %q…", cmd, code, stdout, stderr, want)
		}
	}
	if code, stdout, _ := runArgs("version"); code != 0 || !strings.HasPrefix(stdout, "handoff ") {
		t.Errorf("handoff version on darwin: exit %d, %q", code, stdout)
	}
	if err := needsLinux("run", "linux"); err != nil {
		t.Errorf("on linux: %v", err)
	}
}

// The probe flags' checks read what --ready and --health set: a valid
// combination of them parses whatever order it is given in (the checks
// run in the order of --help, see runFlags).
func TestParseRunProbeFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--ready-host", "api", "--ready-interval", "50ms", "--ready", "http:/healthz", "--health", "http:/live", "--health-timeout", "1s"},
		{"--health-timeout", "1s", "--health", "http:/live", "--ready", "http:/healthz", "--ready-interval", "50ms", "--ready-host", "api"},
	} {
		cfg, _, err := parseRun(append(append([]string{"--listen", "127.0.0.1:0", "--balance", "random"}, args...), "--", "true"), &bytes.Buffer{})
		if err != nil {
			t.Fatalf("%q: %v", args, err)
		}
		if cfg.ReadyProbe == nil || cfg.ReadyProbe.Host != "api" || cfg.ReadyProbe.Path != "/healthz" ||
			cfg.Health == nil || cfg.Health.Host != "api" || cfg.ReadyInterval != 50*time.Millisecond || cfg.ProbeTimeout != time.Second {
			t.Errorf("%q: ready %+v health %+v interval %s timeout %s", args, cfg.ReadyProbe, cfg.Health, cfg.ReadyInterval, cfg.ProbeTimeout)
		}
	}
}
