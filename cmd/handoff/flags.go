package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"regexp"
	"slices"
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

// flagSpec is one flag of a command, declared once: its name, its
// default, its lines in --help and the check of its value. T is what the
// command reads its flags into.
type flagSpec[T any] struct {
	name string // without the dashes
	arg  string // its value in --help: "N", "DURATION"; "" for a switch
	// value points into T, to a string, bool, int, time.Duration or
	// flag.Value (a repeatable flag).
	value func(*T) any
	// def is the default, of the type value points to; nil for its zero
	// value. help says it in words.
	def any
	// help is the flag's text in --help as it prints, wrapped: the first
	// line goes beside the flag, the others under it.
	help string
	// check runs once the whole command line is read, in the order of the
	// command's flags: it refuses a bad value in one line that names the
	// flag, and sets what the flag configures. nil: any value does.
	check func(*T) error

	// The flag's row in its command's flag table in the docs, which
	// TestFlagTables writes from these (flagdoc.go): Markdown as the
	// cell reads, links included, a bar as it is (the table escapes it).
	// doc is the meaning, docDefault the default; a row has one of them
	// at least.
	doc, docDefault string
	// docArgs name the flag in the row's first cell, each as
	// `--name ARG`, where arg would say too little there: the words a
	// MODE takes, the forms of a value. nil: arg.
	docArgs []string
	// docJoin puts the flag in the row of the flag before it: each of
	// the row's cells goes on with its own, after a comma.
	docJoin bool
	// docRows, in place of the row above: a row for each of its values.
	docRows []flagDoc
}

// withHelp is s with another help text.
func (s flagSpec[T]) withHelp(help string) flagSpec[T] {
	s.help = help
	return s
}

func (s flagSpec[T]) label() string {
	if s.arg == "" {
		return "--" + s.name
	}
	return "--" + s.name + " " + s.arg
}

// define adds s to fs, its value going into into.
func (s flagSpec[T]) define(fs *flag.FlagSet, into *T) {
	switch p := s.value(into).(type) {
	case *string:
		fs.StringVar(p, s.name, defaultOf[string](s.def), "")
	case *bool:
		fs.BoolVar(p, s.name, defaultOf[bool](s.def), "")
	case *int:
		fs.IntVar(p, s.name, defaultOf[int](s.def), "")
	case *time.Duration:
		fs.DurationVar(p, s.name, defaultOf[time.Duration](s.def), "")
	case flag.Value:
		fs.Var(p, s.name, "")
	default:
		panic(fmt.Sprintf("--%s: no flag of type %T", s.name, p))
	}
}

func defaultOf[V any](def any) V {
	if def == nil {
		var zero V
		return zero
	}
	return def.(V)
}

// command is a subcommand and its flags. T is what its flags are read
// into.
type command[T any] struct {
	name string
	// head and tail are its --help before and after the list of flags.
	head, tail string
	// column is where the flags' help texts start in --help, past the
	// indent of two spaces.
	column int
	// flags are listed in --help, and checked, in this order. also are
	// accepted too, and checked after them, but not listed: head or tail
	// says what they are.
	flags, also []flagSpec[T]
}

func (c command[T]) all() []flagSpec[T] {
	return append(slices.Clip(c.flags), c.also...)
}

// usage is c's --help.
func (c command[T]) usage() string {
	var b strings.Builder
	b.WriteString(c.head)
	b.WriteString("Flags:\n")
	writeFlags(&b, c.flags, c.column)
	b.WriteString(c.tail)
	return b.String()
}

// writeFlags lists specs as --help shows them: the flag and its value,
// then its help from column on, the help's further lines indented to
// column. A flag that reaches column has its help two spaces after it,
// aligned with that of the flags next to it that reach column too.
func writeFlags[T any](b *strings.Builder, specs []flagSpec[T], column int) {
	long := func(i int) bool { return i >= 0 && i < len(specs) && len(specs[i].label()) >= column }
	for i, s := range specs {
		at := column
		if long(i) {
			first, last := i, i
			for long(first - 1) {
				first--
			}
			for long(last + 1) {
				last++
			}
			for _, n := range specs[first : last+1] {
				at = max(at, len(n.label())+2)
			}
		}
		lines := strings.Split(s.help, "\n")
		fmt.Fprintf(b, "  %-*s%s\n", at, s.label(), lines[0])
		for _, l := range lines[1:] {
			fmt.Fprintf(b, "  %*s%s\n", column, "", l)
		}
	}
}

// flagSet is a FlagSet of c's flags that reads them into into.
func (c command[T]) flagSet(into *T) *flag.FlagSet {
	fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	for _, s := range c.all() {
		s.define(fs, into)
	}
	return fs
}

// check runs the checks of c's flags on what they were read into.
func (c command[T]) check(into *T) error {
	for _, s := range c.all() {
		if s.check == nil {
			continue
		}
		if err := s.check(into); err != nil {
			return usageError{err}
		}
	}
	return nil
}

// parseFlags reads args with fs: --help prints usage() to stdout and is
// errHelp, a mistake is one line.
func parseFlags(fs *flag.FlagSet, args []string, stdout io.Writer, usage func() string) error {
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, usage())
		return errHelp
	}
	if err != nil {
		return usageError{flagError(fs.Name(), err)}
	}
	return nil
}

// given returns the names of the flags on fs's command line.
func given(fs *flag.FlagSet) map[string]bool {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	return set
}

// without is specs less those named.
func without[T any](specs []flagSpec[T], names ...string) []flagSpec[T] {
	return slices.DeleteFunc(slices.Clone(specs), func(s flagSpec[T]) bool { return slices.Contains(names, s.name) })
}

// listFlag is a repeatable flag: every value given, in order.
type listFlag struct{ values []string }

func (l *listFlag) String() string     { return strings.Join(l.values, ",") }
func (l *listFlag) Set(v string) error { l.values = append(l.values, v); return nil }

// runOptions are the flags of 'handoff run' and 'handoff dev' as given,
// and the configuration their checks make of them.
type runOptions struct {
	given map[string]bool // the flags on the command line
	cfg   runtime.Config
	log   logConfig
	dev   devConfig

	listens, watchPaths, includes, excludes listFlag

	ready, stopSignal, maxMemory, adoptBind, output string
	minUptime                                       time.Duration
	probes                                          probeFlags
}

// flagColumn is where the help of a flag of run and dev starts.
const flagColumn = 25

var runCmd = command[runOptions]{name: "run", head: runHead, tail: runTail, column: flagColumn, flags: runFlags}

const runHead = `Usage: handoff run [flags] -- COMMAND [ARG...]

Runs COMMAND as --workers worker processes that share the listening sockets.

`

// runFlags are the flags of 'handoff run', in the order of its --help;
// 'handoff dev' takes them too, but for --watch and --watch-path, and
// with a --workers of its own. Their checks run in this order, once the
// whole command line is read: a check that reads what another sets
// (--ready-host, --ready-interval and --health-timeout read the probes
// --ready and --health make; --ready-timeout reads --ready; --health and
// --metrics read --listen and --balance) comes after it.
var runFlags = []flagSpec[runOptions]{
	{
		name: "listen", arg: "[NAME=]ADDR",
		value: func(o *runOptions) any { return &o.listens },
		help: `socket to listen on, repeatable: HOST:PORT (TCP) or
unix:PATH. Workers get them as fds 3, 4, ... in this
order; NAME goes into LISTEN_FDNAMES (default
listener0, listener1, ...)`,
		doc: "socket to listen on, repeatable: `HOST:PORT` (TCP) or " +
			"`unix:PATH`; workers get them as fds 3, 4, … in this order; " +
			"NAME goes into `LISTEN_FDNAMES` (default `listener0`, " +
			"`listener1`, …)",
		docDefault: "required",
		check:      (*runOptions).checkListen,
	},
	workersFlag(0, `worker processes (default: the CPUs the process may
use, cgroup CPU quota included, %d here)`,
		"the CPUs the process may use: its CPU affinity, or its cgroup "+
			"CPU quota (v1 `cpu.cfs_quota_us`/`cpu.cfs_period_us`, v2 "+
			"`cpu.max`, the tightest of its cgroup and their parents) "+
			"rounded up when that is less, at least 1; logged at start as "+
			"`workers` with `from` (see "+
			"[docs/containers.md](containers.md))"),
	{
		name: "adopt-bind", arg: "MODE", def: "auto",
		value: func(o *runOptions) any { return &o.adoptBind },
		help: `auto, on or off (default auto): a worker that binds
a --listen address itself, as a server written to
run alone does (listen(3000)), gets the primary's
socket at that fd instead, and accepts from it as
a LISTEN_FDS worker does. Every other bind runs
untouched. Linux 5.9+ (seccomp user notification);
workers then run with no_new_privs. auto: on where
the system allows it, else off (one info line says
why); on: a start-up error where it cannot work`,
		docArgs: []string{"auto|on|off"},
		doc: "a worker that binds a `--listen` address itself gets the " +
			"primary's socket at that fd instead (see [Wrapping a server " +
			"that binds its own " +
			"port](#wrapping-a-server-that-binds-its-own-port)); workers " +
			"then run with `no_new_privs`. `auto`: on where the kernel and " +
			"the seccomp policy allow it, else off with one info line " +
			"(`bind adoption off`) saying why; `on`: a start-up error where " +
			"it cannot work",
		docDefault: "`auto`",
		check: func(o *runOptions) (err error) {
			o.cfg.AdoptBind, err = runtime.ParseAdoptMode(o.adoptBind)
			return err
		},
	},
	{
		name: "balance", arg: "MODE", def: "auto",
		value: func(o *runOptions) any { return &o.cfg.Balance },
		help: `how new TCP connections reach the workers (default
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
is empty.`,
		docArgs: []string{"auto|round-robin|random|shared"},
		doc: "how new connections are spread over the workers (see " +
			"[Balancing](deploys.md#balancing-a-socket-per-worker)): " +
			"`round-robin` and `random` give each worker a socket of its " +
			"own in a `SO_REUSEPORT` group that the primary steers " +
			"(`round-robin` needs CAP_BPF or CAP_SYS_ADMIN to load eBPF, " +
			"`random` nothing); `shared` is one socket every worker accepts " +
			"from; `auto` is the best this machine can do, logged at start " +
			"as `balancing` with its reason. A mode the machine cannot do " +
			"is a start-up error",
		docDefault: "`auto`",
		check: func(o *runOptions) error {
			switch o.cfg.Balance {
			case "auto", "round-robin", "random", "shared":
				return nil
			}
			return fmt.Errorf("--balance %q: use round-robin, random, shared or auto", o.cfg.Balance)
		},
	},
	{
		name: "ready", arg: "MODE", def: "delay:1s",
		value: func(o *runOptions) any { return &o.ready },
		help: `how a worker tells it is ready (default delay:1s):
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
                  a socket per worker`,
		docRows: []flagDoc{
			{
				args: []string{"notify"},
				doc:  "a worker is ready when it sends `READY=1` to `$NOTIFY_SOCKET`",
			},
			{
				args: []string{"bind"},
				doc: "a worker is ready once it has bound a `--listen` address " +
					"itself, which the primary adopted (or at `READY=1`, if " +
					"earlier); needs bind adoption (with `--adopt-bind auto`, a " +
					"start-up error where it cannot work)",
			},
			{
				args: []string{"delay:DURATION"},
				doc: "a worker is ready once it has stayed up that long (or at " +
					"`READY=1`, if earlier)",
				def: "`delay:1s`",
			},
			{
				args: []string{"http:PATH", "https:PATH"},
				doc: "a worker is ready once `GET PATH`, sent through that worker's " +
					"own socket before it gets any traffic, answers 2xx (`https:` " +
					"without verification); see [Readiness and " +
					"health](deploys.md#readiness-and-health-http-probes). Needs a " +
					"socket per worker",
			},
		},
		check: (*runOptions).checkReady,
	},
	{
		name: "ready-host", arg: "HOST", def: "localhost",
		value:      func(o *runOptions) any { return &o.probes.host },
		help:       `Host header of HTTP probes (default localhost)`,
		doc:        "the `Host` header (and TLS server name) of HTTP probes",
		docDefault: "`localhost`",
		check:      (*runOptions).checkReadyHost,
	},
	{
		name: "ready-interval", arg: "DURATION", def: runtime.DefaultReadyInterval,
		value: func(o *runOptions) any { return &o.probes.ready },
		help: `time between --ready http: probes (default
200ms)`,
		doc:        "time between `--ready http:` probes of a new worker",
		docDefault: "`200ms`",
		check:      (*runOptions).checkReadyInterval,
	},
	{
		name: "ready-timeout", arg: "DURATION", def: runtime.DefaultReadyTimeout,
		value: func(o *runOptions) any { return &o.cfg.ReadyTimeout },
		help: `a new worker not ready by then is stopped and the
deploy aborted (default 60s)`,
		doc: "a new worker not ready by then is stopped (stop signal, then " +
			"`SIGKILL` after `--drain-timeout`) and the deploy aborted",
		docDefault: "`60s`",
		check:      (*runOptions).checkReadyTimeout,
	},
	{
		name: "drain-timeout", arg: "DURATION", def: runtime.DefaultDrainTimeout,
		value: func(o *runOptions) any { return &o.cfg.DrainTimeout },
		help: `time a retiring worker has after the stop signal
before SIGKILL (default 30s)`,
		doc:        "time a retiring worker has after the stop signal before `SIGKILL`",
		docDefault: "`30s`",
		check:      func(o *runOptions) error { return positive("drain-timeout", o.cfg.DrainTimeout) },
	},
	{
		name: "min-uptime", arg: "DURATION", def: runtime.DefaultMinUptime,
		value: func(o *runOptions) any { return &o.minUptime },
		help: `probation of a deploy: a new worker that exits
within DURATION of getting ready fails the deploy,
which is rolled back as a whole (default 5s; 0
turns probation off)`,
		doc: "probation of a deploy: a new worker must stay up that long " +
			"after it is ready; one that exits sooner fails the deploy, " +
			"which is rolled back as a whole to the previous generation " +
			"(see " +
			"[Generations](deploys.md#generations-pinned-files-probation-rollback)). " +
			"`0` turns probation off",
		docDefault: "`5s`",
		check:      (*runOptions).checkMinUptime,
	},
	{
		name:  "standby",
		value: func(o *runOptions) any { return &o.cfg.Standby },
		help: `through a deploy's probation, keep the last old
worker standing by, steered away from new
connections, to take its slot back at once if the
deploy fails; it goes on answering its open
keep-alive connections until the probation ends
(default off: it retires like the others, and a
failure starts the previous version again)`,
		doc: "through probation, keep the last slot's old worker standing by " +
			"at weight 0 (steered away from new connections; its open ones " +
			"go on) so that a failed deploy gives it its slot back at once, " +
			"instead of starting the previous version again; needs a socket " +
			"per worker: refused with `--balance shared` or only unix " +
			"listeners (see " +
			"[Generations](deploys.md#generations-pinned-files-probation-rollback))",
		docDefault: "off",
		check:      func(o *runOptions) error { return o.cfg.CheckStandby() },
	},
	{
		name: "surge", arg: "K", def: 1,
		value: func(o *runOptions) any { return &o.cfg.Surge },
		help: `a deploy starts up to K new workers at once (never
more than N+K live, never fewer than N ready); its
roll-back goes K at a time too (default 1; more
than --workers means all)`,
		doc: "a deploy starts up to K new workers at once beside the N that " +
			"serve (never more than N+K live, never fewer than N ready), " +
			"and retires the old ones as their replacements take their " +
			"slots; its roll-back and a self-upgrade's roll go K at a time " +
			"too; a deploy takes about ⌈N/K⌉ start times. More than " +
			"`--workers` means all",
		docDefault: "`1`",
		check: func(o *runOptions) error {
			if o.cfg.Surge < 1 {
				return fmt.Errorf("--surge %d: must be at least 1 (new workers started at once in a deploy)", o.cfg.Surge)
			}
			return nil
		},
	},
	{
		name: "health", arg: "http:PATH",
		value: func(o *runOptions) any { return &o.probes.health },
		help: `probe every ready worker with GET PATH through its
own socket (https:PATH: TLS, unverified); one that
fails --health-threshold times in a row is
replaced, a new one first (on probation, it fails
its deploy); needs a socket per worker`,
		docArgs: []string{"http:PATH", "https:PATH"},
		doc: "probe every ready worker with `GET PATH` through its own " +
			"socket; one that fails `--health-threshold` times in a row is " +
			"replaced, start-new-then-retire (on probation it fails its " +
			"deploy, which rolls back). Needs a socket per worker",
		docDefault: "none",
		check:      (*runOptions).checkHealth,
	},
	{
		name: "health-interval", arg: "DURATION", def: runtime.DefaultHealthInterval,
		value:      func(o *runOptions) any { return &o.probes.interval },
		help:       `time between health probes (default 10s)`,
		doc:        "time between health probes",
		docDefault: "`10s`",
		check:      (*runOptions).checkHealthInterval,
	},
	{
		name: "health-timeout", arg: "DURATION", def: runtime.DefaultProbeTimeout,
		value: func(o *runOptions) any { return &o.probes.timeout },
		help: `one HTTP probe's bound, --ready http: too
(default 2s)`,
		docJoin:    true,
		doc:        "one HTTP probe's bound (readiness probes' too)",
		docDefault: "`2s`",
		check:      (*runOptions).checkHealthTimeout,
	},
	{
		name: "health-threshold", arg: "N", def: runtime.DefaultHealthThreshold,
		value: func(o *runOptions) any { return &o.probes.threshold },
		help: `failures in a row that make a worker sick
(default 3)`,
		docJoin:    true,
		doc:        "failures in a row that make a worker sick",
		docDefault: "`3`",
		check:      (*runOptions).checkHealthThreshold,
	},
	{
		name: "stop-signal", arg: "SIGNAL", def: "TERM",
		value:      func(o *runOptions) any { return &o.stopSignal },
		help:       `signal that asks a worker to drain (default TERM)`,
		doc:        "signal that asks a worker to drain (`TERM`, `SIGTERM`, `15`, …)",
		docDefault: "`TERM`",
		check: func(o *runOptions) (err error) {
			o.cfg.StopSignal, err = parseSignal(o.stopSignal)
			return err
		},
	},
	{
		name: "pid-file", arg: "PATH",
		value: func(o *runOptions) any { return &o.cfg.PIDFile },
		help: `file holding the pid of the primary that owns the
listeners now, replaced atomically on each upgrade`,
		doc: "always holds the pid of the primary that owns the listeners " +
			"now; replaced atomically on each upgrade, removed on shutdown",
		docDefault: "none",
	},
	{
		name:  "watch",
		value: func(o *runOptions) any { return &o.cfg.Watch },
		help: `deploy, as HUP does, whenever COMMAND's executable
changes (replaced by rename, rewritten, chmodded);
a half-written file is waited for, never started`,
		doc: "deploy, as `HUP` does, whenever COMMAND's executable changes " +
			"(see [Development](development.md))",
		docDefault: "off",
	},
	{
		name: "watch-path", arg: "PATH",
		value: func(o *runOptions) any { return &o.watchPaths },
		help: `also deploy when PATH changes (a file, or a
directory watched recursively); repeatable,
implies --watch`,
		doc: "also deploy when PATH changes: a file, or a directory watched " +
			"recursively; repeatable; implies `--watch`",
		docDefault: "none",
		check: func(o *runOptions) error {
			o.cfg.WatchPaths = o.watchPaths.values
			if len(o.cfg.WatchPaths) > 0 {
				o.cfg.Watch = true
			}
			return checkPaths(o.cfg.WatchPaths)
		},
	},
	{
		name:  "ipc",
		value: func(o *runOptions) any { return &o.cfg.IPC },
		help: `give every worker a message channel: a unix stream
socket after the listeners, named in
HANDOFF_CHANNEL_FD and NODE_CHANNEL_FD (Node's
process.send works on it); {"handoff":"ready"} on
it counts as READY=1`,
		doc: "give every worker a message channel (see [the worker " +
			"contract](worker-contract.md)): Node's `process.send` works on " +
			"it, and `{\"handoff\":\"ready\"}` on it counts as `READY=1`",
		docDefault: "off",
	},
	{
		name: "control", arg: "PATH",
		value: func(o *runOptions) any { return &o.cfg.Control },
		help: `control socket for handoff status/reload/rollback/
scale/stop
(default: a socket named after the first listener
in a private directory, see 'handoff help')`,
		doc: "the control socket that `status`, `reload`, `rollback`, " +
			"`scale` and `stop` talk to (see [Controlling a running " +
			"primary](operations.md#controlling-a-running-primary))",
		docDefault: "one per primary in a private directory",
		check:      (*runOptions).checkControl,
	},
	{
		name: "metrics", arg: "ADDR",
		value: func(o *runOptions) any { return &o.cfg.Metrics },
		help: `serve Prometheus /metrics, /healthz and /readyz on
HOST:PORT (kept across self-upgrades, never passed
to workers)`,
		doc: "serve Prometheus `/metrics`, `/healthz` and `/readyz` on " +
			"`HOST:PORT` (see [Monitoring](operations.md#monitoring)); the " +
			"socket survives self-upgrades and never reaches a worker",
		docDefault: "none",
		check:      (*runOptions).checkMetrics,
	},
	{
		name: "user", arg: "USER[:GROUP]",
		value: func(o *runOptions) any { return &o.cfg.User },
		help: `run the workers as USER (and GROUP, else USER's
group; supplementary groups are USER's); the
primary stays root and binds the listeners`,
		doc: "run the workers as `USER` (names or ids; the group is `GROUP`, " +
			"else `USER`'s; supplementary groups are `USER`'s), as nginx " +
			"does: the primary stays root and binds (ports below 1024 too). " +
			"The workers get `USER`'s `HOME`, `USER`, `LOGNAME` and " +
			"`SHELL`, as systemd's `User=` gives them. A numeric uid with " +
			"no entry in the user database is taken as it is: its group is " +
			"`GROUP`, else the gid of the same number, with no " +
			"supplementary groups, `HOME=/`, `USER` and `LOGNAME` the " +
			"number and no `SHELL`. A primary that is not root, or a user " +
			"name or group name that does not exist, is a start-up error",
		docDefault: "the primary's user",
		check: func(o *runOptions) error {
			name, group, ok := strings.Cut(o.cfg.User, ":")
			if o.given["user"] && (name == "" || (ok && group == "")) {
				return fmt.Errorf("--user %q: give USER or USER:GROUP, e.g. --user www-data or --user www-data:www-data", o.cfg.User)
			}
			return nil
		},
	},
	{
		name: "max-memory", arg: "SIZE",
		value: func(o *runOptions) any { return &o.maxMemory },
		help: `replace a worker whose resident memory stays above
SIZE (512M, 1G, 200MiB, or bytes), one at a time`,
		doc: "a worker whose resident memory (`VmRSS`) is above `SIZE` on 3 " +
			"samples in a row (one a second) is replaced " +
			"start-new-then-retire, one at a time, as a deploy replaces it. " +
			"`SIZE`: bytes, or `K`, `M`, `G`, `T` (powers of 1024; `512M`, " +
			"`1G`, `200MiB`)",
		docDefault: "none",
		check: func(o *runOptions) (err error) {
			if !o.given["max-memory"] {
				return nil
			}
			if o.cfg.MaxMemory, err = parseSize(o.maxMemory); err != nil {
				return fmt.Errorf("--max-memory %q: %v", o.maxMemory, err)
			}
			return nil
		},
	},
	{
		name: "watchdog", arg: "DURATION",
		value: func(o *runOptions) any { return &o.cfg.Watchdog },
		help: `workers get WATCHDOG_USEC and WATCHDOG_PID; one that
sends no WATCHDOG=1 for longer (counted from its
readiness), or sends WATCHDOG=trigger, is hung: it
is replaced, then drains for DURATION at most`,
		doc: "workers get `WATCHDOG_USEC` and `WATCHDOG_PID` (systemd's " +
			"watchdog protocol, as `sd_watchdog_enabled()` reads it); a " +
			"worker that sends no `WATCHDOG=1` for longer than `DURATION` " +
			"(counted from its readiness, then from its last ping), or " +
			"sends `WATCHDOG=trigger`, is hung: a new worker is started, " +
			"and once it is ready the hung one gets the stop signal and " +
			"`DURATION` (at most `--drain-timeout`) to drain before " +
			"`SIGKILL`. Only for workers that ping: one that never does is " +
			"replaced every `DURATION`",
		docDefault: "none",
		check: func(o *runOptions) error {
			if o.given["watchdog"] && o.cfg.Watchdog < time.Millisecond {
				return fmt.Errorf("--watchdog %s: must be at least 1ms, e.g. --watchdog 10s", o.cfg.Watchdog)
			}
			return nil
		},
	},
	{
		name: "log-format", arg: "FORMAT", def: "console",
		value:      func(o *runOptions) any { return &o.log.format },
		help:       `console or json (default console)`,
		docArgs:    []string{"console|json"},
		doc:        "log encoding, to stderr",
		docDefault: "`console`",
		check:      func(o *runOptions) error { return checkLogFormat(o.log.format) },
	},
	{
		name: "log-level", arg: "LEVEL", def: "info",
		value:      func(o *runOptions) any { return &o.log.level },
		help:       `debug, info, warn or error (default info)`,
		docArgs:    []string{"debug|info|warn|error"},
		docDefault: "`info`",
		check: func(o *runOptions) error {
			_, err := parseLevel(o.log)
			return err
		},
	},
	{
		name: "worker-output", arg: "MODE",
		value: func(o *runOptions) any { return &o.output },
		help: `how the workers' stdout and stderr lines are
written (default json with --log-format json,
else prefix):
  prefix  "w0:4242| line": slot and pid in front,
          stdout lines to stdout, stderr to stderr
  json    one JSON event per line ("worker
          output": slot, pid, generation,
          stream, line)
  raw     untouched: the workers inherit stdout,
          stderr lines pass as they are`,
		docArgs: []string{"prefix|json|raw"},
		doc: "how the workers' stdout and stderr lines come out (see [Worker " +
			"output](operations.md#worker-output)): `prefix` puts the " +
			"worker's slot and pid in front of each line (`w0:4242| " +
			"listening`), `json` makes each line a JSON event, `raw` leaves " +
			"them untouched",
		docDefault: "`json` with `--log-format json`, else `prefix`",
		check:      (*runOptions).checkWorkerOutput,
	},
}

// workersFlag is --workers with the default def (0: the CPUs this
// process may use, which runtime.Run finds and logs); %d in help is the
// default, docDefault says it in the docs.
func workersFlag(def int, help, docDefault string) flagSpec[runOptions] {
	return flagSpec[runOptions]{
		name: "workers", arg: "N", def: def,
		value: func(o *runOptions) any { return &o.cfg.Workers },
		help:  help,
		doc:   "worker processes", docDefault: docDefault,
		check: func(o *runOptions) error {
			n := o.cfg.Workers
			if n < 1 && o.given["workers"] {
				return fmt.Errorf("--workers %d: must be at least 1", n)
			}
			if n > workerpool.MaxSize {
				return fmt.Errorf("--workers %d: at most %d", n, workerpool.MaxSize)
			}
			return nil
		},
	}
}

const runTail = `
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

// parseRun reads the flags of 'handoff run'.
func parseRun(args []string, stdout io.Writer) (runtime.Config, logConfig, error) {
	o, err := parseCommand(runCmd, args, stdout)
	return o.cfg, o.log, err
}

// parseCommand reads the command line of run or dev, c: its flags, then
// COMMAND.
func parseCommand(c command[runOptions], args []string, stdout io.Writer) (*runOptions, error) {
	o := &runOptions{}
	fs := c.flagSet(o)
	if err := parseFlags(fs, args, stdout, func() string { return runHelp(c) }); err != nil {
		return o, err
	}
	o.given = given(fs)
	o.cfg.Command = fs.Args()
	if len(o.cfg.Command) == 0 || o.cfg.Command[0] == "" {
		return o, usageError{fmt.Errorf("no worker command: put it after --, e.g. handoff %s --listen :8080 -- ./server", c.name)}
	}
	return o, c.check(o)
}

// runHelp is the --help of run or dev, c, with its default number of
// workers in place of %d.
func runHelp(c command[runOptions]) string {
	n := defaultWorkers()
	for _, s := range c.flags {
		if s.name == "workers" && s.def.(int) > 0 {
			n = s.def.(int)
		}
	}
	return fmt.Sprintf(c.usage(), n)
}

func (o *runOptions) checkListen() error {
	if len(o.listens.values) == 0 {
		return errors.New("no --listen given: add --listen HOST:PORT or --listen unix:PATH")
	}
	seen := map[string]bool{}
	for i, v := range o.listens.values {
		l, err := runtime.ParseListen(v, i)
		if err != nil {
			return err
		}
		// Port 0 asks for a new port each time: never the same socket.
		if seen[l.Network+" "+l.Address] && !strings.HasSuffix(l.Address, ":0") {
			return fmt.Errorf("--listen %s is given twice", l.Address)
		}
		seen[l.Network+" "+l.Address] = true
		o.cfg.Listeners = append(o.cfg.Listeners, l)
	}
	return nil
}

func (o *runOptions) checkReady() error {
	cfg, ready := &o.cfg, o.ready
	switch {
	case ready == "notify":
		cfg.Ready = runtime.ReadyNotify
	case ready == "bind":
		cfg.Ready = runtime.ReadyBind
	case strings.HasPrefix(ready, "delay:"):
		d, err := time.ParseDuration(strings.TrimPrefix(ready, "delay:"))
		if err != nil || d <= 0 {
			return fmt.Errorf("--ready %q: the delay must be a positive duration such as delay:1s", ready)
		}
		cfg.Ready, cfg.ReadyDelay = runtime.ReadyDelay, d
	case strings.HasPrefix(ready, "http:"), strings.HasPrefix(ready, "https:"):
		return o.probes.readyProbe(ready, cfg)
	default:
		return fmt.Errorf("--ready %q: use notify, bind, delay:DURATION (e.g. delay:1s) or http:PATH", ready)
	}
	return nil
}

func (o *runOptions) checkReadyTimeout() error {
	if err := positive("ready-timeout", o.cfg.ReadyTimeout); err != nil {
		return err
	}
	if o.cfg.Ready == runtime.ReadyDelay && o.cfg.ReadyDelay >= o.cfg.ReadyTimeout {
		return fmt.Errorf("--ready %s is not shorter than --ready-timeout %s: no worker could ever be ready", o.ready, o.cfg.ReadyTimeout)
	}
	return nil
}

// positive refuses a duration d of flag name that is not above zero.
func positive(name string, d time.Duration) error {
	if d <= 0 {
		return fmt.Errorf("--%s %s: must be positive", name, d)
	}
	return nil
}

func (o *runOptions) checkMinUptime() error {
	switch u := o.minUptime; {
	case u < 0:
		return fmt.Errorf("--min-uptime %s: must be 0 (no probation) or more, e.g. --min-uptime 5s", u)
	case u == 0:
		o.cfg.MinUptime = -1 // off (Config's 0 is the default)
	default:
		o.cfg.MinUptime = u
	}
	return nil
}

// checkPaths refuses an empty --watch-path.
func checkPaths(paths []string) error {
	if slices.Contains(paths, "") {
		return errors.New("--watch-path needs a file or directory")
	}
	return nil
}

func (o *runOptions) checkControl() error {
	if o.cfg.Control == "" {
		return nil
	}
	abs, err := filepath.Abs(o.cfg.Control)
	if err != nil {
		return fmt.Errorf("--control %s: %v", o.cfg.Control, err)
	}
	if len(abs) > 107 {
		return fmt.Errorf("--control %s: a unix socket path may have at most 107 bytes", o.cfg.Control)
	}
	// A new primary after an upgrade resolves it the same way.
	o.cfg.Control = abs
	return nil
}

func (o *runOptions) checkMetrics() error {
	if !o.given["metrics"] {
		return nil
	}
	// A config of the metrics alone fails only for them.
	only := runtime.Config{Command: o.cfg.Command, Listeners: o.cfg.Listeners, Metrics: o.cfg.Metrics}
	if err := only.Validate(); err != nil {
		return err
	}
	onListener := slices.ContainsFunc(o.cfg.Listeners, func(l runtime.Listener) bool {
		return l.Network == "tcp" && l.Address == o.cfg.Metrics
	})
	if onListener && !strings.HasSuffix(o.cfg.Metrics, ":0") {
		return fmt.Errorf("--metrics %s is also a --listen address: give the metrics their own port", o.cfg.Metrics)
	}
	return nil
}

func (o *runOptions) checkWorkerOutput() error {
	output := o.output
	if output == "" {
		// One JSON object per line throughout when the log is JSON.
		output = "prefix"
		if o.log.format == "json" {
			output = "json"
		}
	}
	mode, ok := workerpool.ParseOutputMode(output)
	if !ok {
		return fmt.Errorf("--worker-output %q: use prefix, json or raw", output)
	}
	o.cfg.WorkerOutput = mode
	return nil
}

// sizeUsage is what a bad --max-memory is told.
const sizeUsage = "use bytes or a number with K, M, G or T, e.g. 512M, 1G, 200MiB"

// parseSize reads a memory size: bytes, or a number (a fraction allowed)
// with K, M, G or T, optionally followed by B or iB, in any case. Every
// unit is a power of 1024, as docker's --memory and PM2's
// max_memory_restart read them.
func parseSize(s string) (int64, error) {
	m := sizeRE.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil || (m[2] == "" && m[3] != "") {
		return 0, errors.New(sizeUsage)
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return 0, errors.New(sizeUsage)
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
