package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoff-dev/handoff/runtime"
	"github.com/handoff-dev/handoff/workerpool"
)

var errHelp = errors.New("help shown")

type logConfig struct {
	format, level string
}

type listenFlag struct{ values []string }

func (l *listenFlag) String() string     { return strings.Join(l.values, ",") }
func (l *listenFlag) Set(v string) error { l.values = append(l.values, v); return nil }

const runUsage = `Usage: handoff run [flags] -- COMMAND [ARG...]

Runs COMMAND as --workers worker processes that share the listening sockets.

Flags:
  --listen [NAME=]ADDR     socket to listen on, repeatable: HOST:PORT (TCP) or
                           unix:PATH. Workers get them as fds 3, 4, ... in this
                           order; NAME goes into LISTEN_FDNAMES (default
                           listener0, listener1, ...)
  --workers N              worker processes (default: the CPUs the process may
                           use, cgroup CPU quota included, %d here)
  --adopt-bind MODE        auto, on or off (default auto): a worker that binds
                           a --listen address itself, as a server written to
                           run alone does (listen(3000)), gets the primary's
                           socket at that fd instead, and accepts from it as
                           a LISTEN_FDS worker does. Every other bind runs
                           untouched. Linux 5.9+ (seccomp user notification);
                           workers then run with no_new_privs. auto: on where
                           the system allows it, else off (one info line says
                           why); on: a start-up error where it cannot work
  --balance MODE           how new TCP connections reach the workers (default
                           auto: the best available, named in one line at
                           start):
                             round-robin  each worker has a socket of its
                                          own; the primary gives them new
                                          connections in turn (eBPF: root,
                                          CAP_BPF or CAP_SYS_ADMIN)
                             random       a socket each; a random one of
                                          the serving workers (no privilege)
                             shared       one socket every worker accepts
                                          from (unix: listeners always)
                           With a socket each, a worker being replaced gets no
                           new connection and is stopped only once its queue
                           is empty.
  --ready MODE             how a worker tells it is ready (default delay:1s):
                             notify          it sends READY=1 to $NOTIFY_SOCKET
                             bind            it has bound a --listen address
                                             itself (see --adopt-bind), or
                                             sent READY=1
                             delay:DURATION  it has stayed up that long (a
                                             READY=1 sent earlier counts too)
                             http:PATH       GET PATH, sent through the
                             https:PATH      worker's own socket before it
                                             gets any traffic, answers 2xx
                                             (https: TLS, unverified); needs
                                             a socket per worker
  --ready-host HOST        Host header of HTTP probes (default localhost)
  --ready-interval DURATION  time between --ready http: probes (default
                           200ms)
  --ready-timeout DURATION a new worker not ready by then is stopped and the
                           deploy aborted (default 60s)
  --drain-timeout DURATION time a retiring worker has after the stop signal
                           before SIGKILL (default 30s)
  --min-uptime DURATION    probation of a deploy: a new worker that exits
                           within DURATION of getting ready fails the deploy,
                           which is rolled back as a whole (default 5s; 0
                           turns probation off)
  --standby                through a deploy's probation, keep the last old
                           worker standing by, steered away from new
                           connections, to take its slot back at once if the
                           deploy fails; it goes on answering its open
                           keep-alive connections until the probation ends
                           (default off: it retires like the others, and a
                           failure starts the previous version again)
  --surge K                a deploy starts up to K new workers at once (never
                           more than N+K live, never fewer than N ready); its
                           roll-back goes K at a time too (default 1; more
                           than --workers means all)
  --health http:PATH       probe every ready worker with GET PATH through its
                           own socket (https:PATH: TLS, unverified); one that
                           fails --health-threshold times in a row is
                           replaced, a new one first (on probation, it fails
                           its deploy); needs a socket per worker
  --health-interval DURATION  time between health probes (default 10s)
  --health-timeout DURATION   one HTTP probe's bound, --ready http: too
                           (default 2s)
  --health-threshold N     failures in a row that make a worker sick
                           (default 3)
  --stop-signal SIGNAL     signal that asks a worker to drain (default TERM)
  --pid-file PATH          file holding the pid of the primary that owns the
                           listeners now, replaced atomically on each upgrade
  --watch                  deploy, as HUP does, whenever COMMAND's executable
                           changes (replaced by rename, rewritten, chmodded);
                           a half-written file is waited for, never started
  --watch-path PATH        also deploy when PATH changes (a file, or a
                           directory watched recursively); repeatable,
                           implies --watch
  --ipc                    give every worker a message channel: a unix stream
                           socket after the listeners, named in
                           HANDOFF_CHANNEL_FD and NODE_CHANNEL_FD (Node's
                           process.send works on it); {"handoff":"ready"} on
                           it counts as READY=1
  --control PATH           control socket for handoff status/reload/rollback/
                           scale/stop
                           (default: a socket named after the first listener
                           in a private directory, see 'handoff help')
  --metrics ADDR           serve Prometheus /metrics, /healthz and /readyz on
                           HOST:PORT (kept across self-upgrades, never passed
                           to workers)
  --user USER[:GROUP]      run the workers as USER (and GROUP, else USER's
                           group; supplementary groups are USER's); the
                           primary stays root and binds the listeners
  --max-memory SIZE        replace a worker whose resident memory stays above
                           SIZE (512M, 1G, 200MiB, or bytes), one at a time
  --watchdog DURATION      workers get WATCHDOG_USEC and WATCHDOG_PID; one that
                           sends no WATCHDOG=1 for longer (counted from its
                           readiness), or sends WATCHDOG=trigger, is hung: it
                           is replaced, then drains for DURATION at most
  --log-format FORMAT      console or json (default console)
  --log-level LEVEL        debug, info, warn or error (default info)
  --worker-output MODE     how the workers' stdout and stderr lines are
                           written (default json with --log-format json,
                           else prefix):
                             prefix  "w0:4242| line": slot and pid in front,
                                     stdout lines to stdout, stderr to stderr
                             json    one JSON event per line ("worker
                                     output": slot, pid, generation,
                                     stream, line)
                             raw     untouched: the workers inherit stdout,
                                     stderr lines pass as they are

Signals to the primary:
  HUP        deploy what is on disk now: replace the workers one at a time
             (and the primary first, when its own executable changed)
  TERM, INT  graceful shutdown: drain every worker, then exit 0
  TTIN, TTOU one worker more, one worker less (as handoff scale +1 / -1)

Every worker gets LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID (systemd socket
activation), NOTIFY_SOCKET (sd_notify, private to the worker), HANDOFF_WORKER
(its slot, 0..N-1), HANDOFF_GENERATION (the deploy it belongs to) and PORT
(the first TCP listener's port, unless the primary's environment sets PORT);
with --watchdog also WATCHDOG_USEC and WATCHDOG_PID. Otherwise workers inherit the
primary's environment, less its own LISTEN_*, NOTIFY_SOCKET and WATCHDOG_*.
`

// command is a subcommand that takes the flags of 'handoff run'.
type command struct {
	name string
	// usage is the --help text; %d in it is the default worker count.
	usage string
	// workers is the default of --workers; 0 means defaultWorkers().
	workers int
	// flags adds the command's own flags; the check it returns runs once
	// the rest is parsed.
	flags func(fs *flag.FlagSet, cfg *runtime.Config) (check func() error)
}

var runCmd = command{name: "run", usage: runUsage, flags: watchFlags}

// parseRun reads the flags of 'handoff run'.
func parseRun(args []string, stdout io.Writer) (runtime.Config, logConfig, error) {
	return parseCommand(runCmd, args, stdout)
}

// watchFlags are --watch and --watch-path.
func watchFlags(fs *flag.FlagSet, cfg *runtime.Config) func() error {
	var watches listenFlag
	fs.BoolVar(&cfg.Watch, "watch", false, "")
	fs.Var(&watches, "watch-path", "")
	return func() error {
		for _, w := range watches.values {
			if w == "" {
				return usageError{errors.New("--watch-path needs a file or directory")}
			}
		}
		cfg.WatchPaths = watches.values
		if len(cfg.WatchPaths) > 0 {
			cfg.Watch = true
		}
		return nil
	}
}

// parseCommand reads the run flags and c's own.
func parseCommand(c command, args []string, stdout io.Writer) (runtime.Config, logConfig, error) {
	var (
		cfg     runtime.Config
		lc      logConfig
		listens listenFlag
		ready   string
		stop    string
		maxMem  string
		uptime  time.Duration
		output  string
		adoptB  string
		probes  probeFlags
	)
	workers := c.workers
	if workers == 0 {
		workers = defaultWorkers()
	}
	fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Var(&listens, "listen", "")
	fs.IntVar(&cfg.Workers, "workers", 0, "")
	fs.StringVar(&ready, "ready", "delay:1s", "")
	fs.DurationVar(&cfg.ReadyTimeout, "ready-timeout", runtime.DefaultReadyTimeout, "")
	fs.DurationVar(&cfg.DrainTimeout, "drain-timeout", runtime.DefaultDrainTimeout, "")
	fs.DurationVar(&uptime, "min-uptime", runtime.DefaultMinUptime, "")
	fs.StringVar(&stop, "stop-signal", "TERM", "")
	fs.StringVar(&cfg.PIDFile, "pid-file", "", "")
	fs.BoolVar(&cfg.IPC, "ipc", false, "")
	fs.StringVar(&cfg.Control, "control", "", "")
	fs.StringVar(&lc.format, "log-format", "console", "")
	fs.StringVar(&lc.level, "log-level", "info", "")
	fs.StringVar(&output, "worker-output", "", "")
	fs.StringVar(&cfg.Metrics, "metrics", "", "")
	fs.StringVar(&cfg.User, "user", "", "")
	fs.StringVar(&maxMem, "max-memory", "", "")
	fs.DurationVar(&cfg.Watchdog, "watchdog", 0, "")
	fs.StringVar(&adoptB, "adopt-bind", "auto", "")
	fs.StringVar(&cfg.Balance, "balance", "auto", "")
	fs.IntVar(&cfg.Surge, "surge", 1, "")
	fs.BoolVar(&cfg.Standby, "standby", false, "")
	probes.define(fs)
	check := c.flags(fs, &cfg)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(stdout, c.usage, workers)
			return cfg, lc, errHelp
		}
		return cfg, lc, usageError{flagError(c.name, err)}
	}

	fail := func(format string, a ...any) (runtime.Config, logConfig, error) {
		return cfg, lc, usageError{fmt.Errorf(format, a...)}
	}
	cfg.Command = fs.Args()
	if len(cfg.Command) == 0 || cfg.Command[0] == "" {
		return fail("no worker command: put it after --, e.g. handoff %s --listen :8080 -- ./server", c.name)
	}
	if len(listens.values) == 0 {
		return fail("no --listen given: add --listen HOST:PORT or --listen unix:PATH")
	}
	seen := map[string]bool{}
	for i, v := range listens.values {
		l, err := runtime.ParseListen(v, i)
		if err != nil {
			return cfg, lc, usageError{err}
		}
		// Port 0 asks for a new port each time: never the same socket.
		if seen[l.Network+" "+l.Address] && !strings.HasSuffix(l.Address, ":0") {
			return fail("--listen %s is given twice", l.Address)
		}
		seen[l.Network+" "+l.Address] = true
		cfg.Listeners = append(cfg.Listeners, l)
	}
	if cfg.Workers < 0 || (cfg.Workers == 0 && flagSet(fs, "workers")) {
		return fail("--workers %d: must be at least 1", cfg.Workers)
	}
	if cfg.Workers > workerpool.MaxSize {
		return fail("--workers %d: at most %d", cfg.Workers, workerpool.MaxSize)
	}
	if cfg.Workers == 0 {
		// 0 leaves the default to runtime.Run, which logs where it comes
		// from (a cgroup CPU quota, the CPU affinity).
		cfg.Workers = c.workers
	}
	switch {
	case ready == "notify":
		cfg.Ready = runtime.ReadyNotify
	case ready == "bind":
		cfg.Ready = runtime.ReadyBind
	case strings.HasPrefix(ready, "delay:"):
		d, err := time.ParseDuration(strings.TrimPrefix(ready, "delay:"))
		if err != nil || d <= 0 {
			return fail("--ready %q: the delay must be a positive duration such as delay:1s", ready)
		}
		cfg.Ready, cfg.ReadyDelay = runtime.ReadyDelay, d
	case strings.HasPrefix(ready, "http:"), strings.HasPrefix(ready, "https:"):
		if err := probes.readyProbe(ready, &cfg); err != nil {
			return cfg, lc, usageError{err}
		}
	default:
		return fail("--ready %q: use notify, bind, delay:DURATION (e.g. delay:1s) or http:PATH", ready)
	}
	if cfg.Surge < 1 {
		return fail("--surge %d: must be at least 1 (new workers started at once in a deploy)", cfg.Surge)
	}
	if err := probes.check(fs, &cfg); err != nil {
		return cfg, lc, usageError{err}
	}
	if cfg.ReadyTimeout <= 0 {
		return fail("--ready-timeout %s: must be positive", cfg.ReadyTimeout)
	}
	if cfg.DrainTimeout <= 0 {
		return fail("--drain-timeout %s: must be positive", cfg.DrainTimeout)
	}
	switch {
	case uptime < 0:
		return fail("--min-uptime %s: must be 0 (no probation) or more, e.g. --min-uptime 5s", uptime)
	case uptime == 0:
		cfg.MinUptime = -1 // off (Config's 0 is the default)
	default:
		cfg.MinUptime = uptime
	}
	if cfg.Ready == runtime.ReadyDelay && cfg.ReadyDelay >= cfg.ReadyTimeout {
		return fail("--ready %s is not shorter than --ready-timeout %s: no worker could ever be ready", ready, cfg.ReadyTimeout)
	}
	if err := check(); err != nil {
		return cfg, lc, err
	}
	if cfg.Control != "" {
		abs, err := filepath.Abs(cfg.Control)
		if err != nil {
			return fail("--control %s: %v", cfg.Control, err)
		}
		if len(abs) > 107 {
			return fail("--control %s: a unix socket path may have at most 107 bytes", cfg.Control)
		}
		// A new primary after an upgrade resolves it the same way.
		cfg.Control = abs
	}
	sig, err := parseSignal(stop)
	if err != nil {
		return cfg, lc, usageError{err}
	}
	cfg.StopSignal = sig
	if flagSet(fs, "max-memory") {
		if cfg.MaxMemory, err = parseSize(maxMem); err != nil {
			return fail("--max-memory %q: %v", maxMem, err)
		}
	}
	if cfg.AdoptBind, err = runtime.ParseAdoptMode(adoptB); err != nil {
		return cfg, lc, usageError{err}
	}
	switch cfg.Balance {
	case "auto", "round-robin", "random", "shared":
	default:
		return fail("--balance %q: use round-robin, random, shared or auto", cfg.Balance)
	}
	if err := cfg.CheckStandby(); err != nil {
		return cfg, lc, usageError{err}
	}
	if flagSet(fs, "watchdog") && cfg.Watchdog < time.Millisecond {
		return fail("--watchdog %s: must be at least 1ms, e.g. --watchdog 10s", cfg.Watchdog)
	}
	if flagSet(fs, "metrics") {
		if err := cfg.Validate(); err != nil && strings.HasPrefix(err.Error(), "--metrics") {
			return cfg, lc, usageError{err}
		}
		if seen["tcp "+cfg.Metrics] && !strings.HasSuffix(cfg.Metrics, ":0") {
			return fail("--metrics %s is also a --listen address: give the metrics their own port", cfg.Metrics)
		}
	}
	if output == "" {
		// One JSON object per line throughout when the log is JSON.
		output = "prefix"
		if lc.format == "json" {
			output = "json"
		}
	}
	mode, ok := workerpool.ParseOutputMode(output)
	if !ok {
		return fail("--worker-output %q: use prefix, json or raw", output)
	}
	cfg.WorkerOutput = mode
	if flagSet(fs, "user") {
		if name, group, ok := strings.Cut(cfg.User, ":"); name == "" || (ok && group == "") {
			return fail("--user %q: give USER or USER:GROUP, e.g. --user www-data or --user www-data:www-data", cfg.User)
		}
	}
	return cfg, lc, nil
}

// parseSize reads a memory size: bytes, or a number (a fraction allowed)
// with K, M, G or T, optionally followed by B or iB, in any case. Every
// unit is a power of 1024, as docker's --memory and PM2's
// max_memory_restart read them.
func parseSize(s string) (int64, error) {
	m := sizeRE.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil || (m[2] == "" && m[3] != "") {
		return 0, errors.New("use bytes or a number with K, M, G or T, e.g. 512M, 1G, 200MiB")
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return 0, errors.New("use bytes or a number with K, M, G or T, e.g. 512M, 1G, 200MiB")
	}
	shift := map[string]uint{"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[strings.ToUpper(m[2])]
	bytes := v * float64(int64(1)<<shift)
	switch {
	case bytes >= 1<<62:
		return 0, errors.New("too large")
	case bytes < 1<<20:
		return 0, errors.New("below 1MiB no worker fits; e.g. 512M")
	}
	return int64(bytes), nil
}

var sizeRE = regexp.MustCompile(`^([0-9]+(?:\.[0-9]+)?)\s*([kKmMgGtT]?)((?:[iI]?[bB])?)$`)

func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// flagError rewrites the flag package's errors into one line that says
// what to do.
func flagError(cmd string, err error) error {
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, "flag provided but not defined: -"); ok {
		return fmt.Errorf("unknown flag --%s: see 'handoff %s --help'", name, cmd)
	}
	if rest, ok := strings.CutPrefix(msg, "invalid value "); ok {
		// invalid value "x" for flag -ready-timeout: parse error
		if v, f, ok := strings.Cut(rest, " for flag -"); ok {
			name, _, _ := strings.Cut(f, ":")
			return fmt.Errorf("--%s %s: not a valid value (durations look like 500ms, 30s, 2m; counts are whole numbers)", name, v)
		}
	}
	if name, ok := strings.CutPrefix(msg, "flag needs an argument: -"); ok {
		return fmt.Errorf("--%s needs a value: see 'handoff %s --help'", name, cmd)
	}
	return fmt.Errorf("%s: see 'handoff %s --help'", msg, cmd)
}

// parseSignal reads TERM, SIGTERM, sigterm or 15.
func parseSignal(s string) (syscall.Signal, error) {
	var sig syscall.Signal
	if n, err := strconv.Atoi(s); err == nil {
		if n <= 0 || n > 64 {
			return 0, fmt.Errorf("--stop-signal %s: not a signal number", s)
		}
		sig = syscall.Signal(n)
	} else {
		name := strings.ToUpper(s)
		if !strings.HasPrefix(name, "SIG") {
			name = "SIG" + name
		}
		sig = unix.SignalNum(name)
		if sig == 0 {
			return 0, fmt.Errorf("--stop-signal %s: unknown signal (use a name like TERM, INT, QUIT, USR1)", s)
		}
	}
	if sig == unix.SIGKILL || sig == unix.SIGSTOP {
		return 0, fmt.Errorf("--stop-signal %s: a worker cannot catch it to drain; use TERM, INT, QUIT or USR1", s)
	}
	return sig, nil
}
