// Package runtime is handoff's primary: it owns the listening sockets, runs a
// pool of worker processes that share them, replaces the workers one at a time
// on every deploy, and upgrades itself with tableflip when its own executable
// has changed.
//
// # Library mode
//
// A Go program can be its own primary, as with Node's cluster module: its
// main calls Main with an App. Run by a user, Main is the primary (Run, with
// the program's own executable and arguments as the worker command): it
// binds the listeners, starts Config.Workers workers by running the same
// executable again, deploys on SIGHUP and shuts down on TERM or INT. A
// SIGHUP after the executable was rebuilt in place (by rename) upgrades the
// primary itself first: the new binary becomes the new primary, inherits
// the listeners, and rolls the workers one at a time, never below N ready.
// Started by a primary (HANDOFF_WORKER and LISTEN_FDS in its environment),
// the same Main call is the worker: it calls App.Worker with a *Worker that
// holds the listeners, the slot and generation, a Serve helper that drains
// an *http.Server with no lost request, and the message channel.
// HANDOFF_STANDALONE=1 (or App.Standalone) serves in one process instead.
//
// Importing this package makes a program able to act as handoff's exec step
// (internal/shim): when started with HANDOFF_SHIM_EXEC set, it execs that
// command from package initialisation, before any code of the program runs.
// Without that variable nothing happens.
//
// # Messages
//
// Each worker of a library-mode primary (and of `handoff run --ipc`) has a
// message channel: a unix stream socket carrying one JSON value per line, the
// worker's end being the fd after the listeners (HANDOFF_CHANNEL_FD, and
// NODE_CHANNEL_FD, for it is also Node's IPC channel). Hub is the
// primary's side (Send to a slot, Broadcast, App.OnMessage with Reply),
// Worker.Send and Worker.OnMessage the worker's. Sending never blocks: a
// bounded queue per worker, written in order by a goroutine; a full queue
// is an error. Nothing is carried across an upgrade of the primary.
package runtime

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/handoff-dev/handoff/internal/cpus"
	"github.com/handoff-dev/handoff/internal/probe"
	"github.com/handoff-dev/handoff/workerpool"
)

// ReadyMode says how the primary learns that a new worker is ready to serve.
type ReadyMode = workerpool.ReadyMode

const (
	// ReadyNotify: the worker sends READY=1 to the datagram socket named in
	// its NOTIFY_SOCKET (the sd_notify protocol).
	ReadyNotify = workerpool.ReadyNotify
	// ReadyDelay: the worker counts as ready once it has stayed alive for
	// Config.ReadyDelay, or at READY=1 if that comes first.
	ReadyDelay = workerpool.ReadyDelay
	// ReadyBind: the worker counts as ready once it has bound a listener's
	// address, which the primary adopted (Config.AdoptBind; it accepts
	// from the shared socket from then on), or at READY=1 if that comes
	// first.
	ReadyBind = workerpool.ReadyBind
)

// Config is what a primary runs. The zero values of the optional fields take
// the defaults documented on each field, which are also the CLI's defaults.
type Config struct {
	// Listeners, in the order workers see them as fds 3, 4, ...
	Listeners []Listener
	// Command is the worker program and its arguments; Command[0] is looked
	// up in PATH and resolved through symlinks anew on every deploy.
	Command []string
	// Workers is the number of worker processes; 0 means the number of CPUs
	// the process may use: its CPU affinity, or less when a cgroup CPU
	// quota (v1 or v2) allows less, rounded up (see internal/cpus). Run
	// logs that number and where it comes from ("workers", with "from").
	Workers int
	// Ready selects how readiness is detected; the zero value is
	// ReadyNotify. The CLI's default is ReadyDelay with one second.
	Ready ReadyMode
	// ReadyDelay is the time a worker must stay alive to count as ready in
	// ReadyDelay mode; default DefaultReadyDelay. In ReadyBind mode, if
	// positive, a worker that has neither bound a listener's address nor
	// sent READY=1 by then counts as ready too (the default of 'handoff dev');
	// 0 waits for the bind.
	ReadyDelay time.Duration
	// ReadyProbe, if not nil (the CLI's --ready http:PATH), makes a new
	// worker ready only once a GET of it, sent through that worker's own
	// socket, answers 2xx: every ReadyInterval, each bounded by
	// ProbeTimeout. Ready and ReadyDelay are then not used. It needs a
	// socket per worker (a TCP listener, --balance other than shared).
	ReadyProbe *probe.Spec
	// ReadyInterval is the time between readiness probes; default
	// DefaultReadyInterval.
	ReadyInterval time.Duration
	// Health, if not nil (--health http:PATH), probes every ready worker
	// through its own socket each HealthInterval (default 10s); one that
	// fails HealthThreshold (default 3) probes in a row is replaced,
	// start-new-then-retire, or, on probation, fails its deploy.
	Health          *probe.Spec
	HealthInterval  time.Duration
	HealthThreshold int
	// ProbeTimeout bounds one HTTP probe, readiness or health (the CLI's
	// --health-timeout); default 2s.
	ProbeTimeout time.Duration
	// ReadyTimeout bounds how long a new worker may take to become ready;
	// default 60s.
	ReadyTimeout time.Duration
	// DrainTimeout is how long a retiring worker has after the stop signal
	// before SIGKILL; default 30s.
	DrainTimeout time.Duration
	// MinUptime is a deploy's probation (the CLI's --min-uptime): a new
	// worker must stay up that long after it is ready, or the deploy
	// fails and is rolled back as a whole to the previous generation; a
	// deploy is done only once its last worker has passed it. 0 means
	// DefaultMinUptime; a negative value turns probation off (a deploy
	// is done once its workers are ready).
	MinUptime time.Duration
	// Surge is how many new workers a deploy starts at once (the CLI's
	// --surge), and how many slots its roll-back replaces at once: never
	// more than Workers+Surge live, never fewer than Workers ready. 0
	// means 1; more than Workers means all.
	Surge int
	// Standby (the CLI's --standby) keeps, with a probation and a socket
	// per worker, the last slot's old worker standing by through the
	// probation, steered away (no new connection reaches it, its open
	// ones go on), so that a failed deploy gives it its slot back at
	// once. Off (the default), it retires like every other old worker,
	// and once a deploy has rolled only the new version answers, on old
	// keep-alive connections too; a failed probation starts the previous
	// generation again.
	Standby bool
	// StopSignal is sent to retire a worker; default SIGTERM.
	StopSignal syscall.Signal
	// Control is the path of the control socket (`handoff status`,
	// `reload`, `rollback`, `scale`, `stop`; see docs/operations.md); ""
	// means the default path for the first listener, in
	// $HANDOFF_CONTROL_DIR, /run/handoff for root, $XDG_RUNTIME_DIR/handoff
	// or $TMPDIR/handoff-UID. A directory that does not exist is created
	// with mode 0700.
	Control string
	// PIDFile, if set, always holds the pid of the primary that owns the
	// listeners now; it is replaced atomically.
	PIDFile string
	// Logger receives structured events; nil means no logging.
	Logger *zap.Logger
	// WorkerStdout receives the workers' stdout (inherited by them as is
	// with OutputRaw); nil means the primary's. WorkerStderr receives
	// their stderr, whole lines at a time; nil means the primary's. Give
	// WorkerStderr the writer the Logger writes to, taking the same lock
	// (zapcore.Lock), so that their lines and the primary's events never
	// interleave.
	WorkerStdout *os.File
	WorkerStderr io.Writer
	// WorkerOutput is how the workers' lines are written (the CLI's
	// --worker-output): OutputPrefix (the zero value), OutputJSON or
	// OutputRaw. Lines of old workers draining after a deploy or a
	// self-upgrade are forwarded until they exit, and Run returns once
	// they have been, or once none has moved for 2s (see
	// workerpool.Output).
	WorkerOutput OutputMode
	// WorkerOutputEncoder encodes the events of OutputJSON; nil means
	// workerpool.DefaultOutputEncoder, the encoding of handoff's
	// --log-format json. Give the Logger's own to match its keys.
	WorkerOutputEncoder zapcore.Encoder
	// Signals delivers HUP, TERM, INT, TTIN and TTOU; nil means Run catches them
	// itself. See CatchSignals.
	Signals <-chan os.Signal
	// IPC gives every worker a message channel (the CLI's --ipc): the fd
	// after the listeners, named in HANDOFF_CHANNEL_FD and NODE_CHANNEL_FD.
	// A worker may say {"handoff":"ready"} on it instead of READY=1.
	IPC bool
	// Hub, if set, is the primary's end of the message channels (IPC is
	// then implied): send to workers, receive from them.
	Hub *Hub
	// Watch deploys on every change of the worker command's executable
	// (Command[0] as found in PATH; through a symlink, whatever file it
	// points to now),
	// exactly as a HUP does. A change is acted on once the file is
	// complete (see reload.Complete) and the events have been quiet for
	// WatchQuiet. When the primary runs its own executable as the worker
	// command (library mode), this watches its own executable.
	Watch bool
	// WatchPaths are further files and directories (watched recursively)
	// whose changes deploy; they imply Watch. Each must exist at start.
	WatchPaths []string
	// WatchQuiet is the debounce of the watch; default
	// reload.DefaultQuiet.
	WatchQuiet time.Duration
	// Metrics, if set, is a HOST:PORT on which the primary serves
	// Prometheus metrics (/metrics), /healthz and /readyz. The socket is
	// handed to a new primary on a self-upgrade like the listeners, and
	// never to the workers.
	Metrics string
	// User, if set, is USER or USER:GROUP (names or numeric ids) the
	// workers run as; the primary keeps its own user, binds the listeners
	// and must be root to switch. The supplementary groups are USER's.
	User string
	// MaxMemory, if positive, is a resident set size in bytes: a worker
	// above it on memorySamples samples in a row is replaced, one at a
	// time, the way a deploy replaces it.
	MaxMemory int64
	// Watchdog, if positive, reaches every worker as WATCHDOG_USEC: a
	// worker that has sent WATCHDOG=1 and then sends none for longer, or
	// sends WATCHDOG=trigger, is considered hung and replaced.
	Watchdog time.Duration
	// AdoptBind says whether a worker that binds a listener's address
	// itself (a server written to run alone: listen(3000)) gets the
	// primary's socket at that fd instead (Linux 5.9+, amd64 and arm64;
	// workers then run with no_new_privs). The zero value is AdoptOff;
	// the CLI's default is AdoptAuto. See docs/wrapping.md, "Wrapping a
	// server that binds its own port".
	AdoptBind AdoptMode
	// Balance says how new connections to a TCP listener are spread over
	// the workers: "round-robin" (each worker has a socket of its own; an
	// eBPF program gives them connections in turn; needs CAP_BPF or
	// CAP_SYS_ADMIN), "random" (a socket each; classic BPF picks one at
	// random among those serving; no privilege), "shared" (one socket
	// every worker accepts from, no steering). "" or "auto": the best this
	// process can use. unix: listeners are always shared. See
	// docs/deploys.md, "Balancing".
	Balance string
	// SampleInterval is how often worker memory and watchdogs are checked;
	// default one second (or a quarter of Watchdog if that is shorter).
	SampleInterval time.Duration

	// workersFrom says where a default Workers comes from, for the log;
	// "" when Workers was given.
	workersFrom string
}

// logWorkers logs the number of workers when it is a default: how many
// CPUs the process may use, and why (a cgroup quota, the CPU affinity).
func (c *Config) logWorkers(log *zap.Logger) {
	if c.workersFrom != "" {
		log.Info("workers", zap.Int("workers", c.Workers), zap.String("from", c.workersFrom))
	}
}

// Defaults.
const (
	DefaultReadyTimeout = 60 * time.Second
	DefaultDrainTimeout = 30 * time.Second
	DefaultReadyDelay   = 1 * time.Second
	DefaultMinUptime    = 5 * time.Second
	// HTTP probes: --ready-interval, --health-interval, --health-timeout,
	// --health-threshold.
	DefaultReadyInterval   = 200 * time.Millisecond
	DefaultHealthInterval  = 10 * time.Second
	DefaultProbeTimeout    = 2 * time.Second
	DefaultHealthThreshold = 3
)

func (c *Config) setDefaults() {
	// A listener given no name is "listener0", "listener1", ... as with
	// --listen, and no network is tcp (on a copy: the caller's slice stays
	// as it was).
	c.Listeners = append([]Listener(nil), c.Listeners...)
	for i := range c.Listeners {
		c.Listeners[i].Name = defaultName(c.Listeners[i].Name, i)
		if c.Listeners[i].Network == "" {
			c.Listeners[i].Network = "tcp"
		}
	}
	if c.Workers == 0 {
		c.Workers, c.workersFrom = cpus.Available()
	}
	if c.ReadyTimeout <= 0 {
		c.ReadyTimeout = DefaultReadyTimeout
	}
	if c.ReadyInterval <= 0 {
		c.ReadyInterval = DefaultReadyInterval
	}
	if c.HealthInterval <= 0 {
		c.HealthInterval = DefaultHealthInterval
	}
	if c.ProbeTimeout <= 0 {
		c.ProbeTimeout = DefaultProbeTimeout
	}
	if c.HealthThreshold <= 0 {
		c.HealthThreshold = DefaultHealthThreshold
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = DefaultDrainTimeout
	}
	if c.MinUptime == 0 {
		c.MinUptime = DefaultMinUptime
	}
	if c.Ready == ReadyDelay && c.ReadyDelay <= 0 {
		c.ReadyDelay = DefaultReadyDelay
	}
	if c.StopSignal == 0 {
		c.StopSignal = syscall.SIGTERM
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if len(c.WatchPaths) > 0 {
		c.Watch = true
	}
	if c.SampleInterval <= 0 {
		c.SampleInterval = time.Second
		if c.Watchdog > 0 && c.Watchdog/4 < c.SampleInterval {
			c.SampleInterval = max(c.Watchdog/4, 10*time.Millisecond)
		}
	}
}

// CheckStandby refuses Standby where no worker can have a socket of its
// own: --balance shared, or no TCP listener.
func (c *Config) CheckStandby() error {
	return c.checkOwnSockets(c.Standby, "--standby", "to keep the standing worker from new connections")
}

// CheckProbes refuses HTTP probes where no worker can have a socket of
// its own to be probed through.
func (c *Config) CheckProbes() error {
	if c.ReadyProbe != nil {
		if err := c.checkOwnSockets(true, "--ready "+c.ReadyProbe.String(), "to probe each worker through its own"); err != nil {
			return err
		}
	}
	if c.Health != nil {
		return c.checkOwnSockets(true, "--health "+c.Health.String(), "to probe each worker through its own")
	}
	return nil
}

// checkOwnSockets refuses what (when asked) if no worker can have a socket
// of its own: --balance shared, or no TCP listener.
func (c *Config) checkOwnSockets(asked bool, what, why string) error {
	if !asked || c.Balance != "shared" && slices.ContainsFunc(c.Listeners, func(l Listener) bool { return l.Network == "tcp" }) {
		return nil
	}
	return fmt.Errorf("%s needs a socket per worker %s, and with --balance shared or only unix listeners every worker shares one: drop %s, or use a TCP listener with --balance auto", what, why, what)
}

// Validate reports the first problem with c as an error that names the
// setting and says what to do.
func (c *Config) Validate() error {
	if len(c.Command) == 0 || c.Command[0] == "" {
		return errors.New("no worker command given: put it after --, e.g. handoff run --listen :8080 -- ./server")
	}
	if len(c.Listeners) == 0 {
		return errors.New("no listener given: add --listen HOST:PORT or --listen unix:PATH")
	}
	if c.Workers < 0 {
		return fmt.Errorf("--workers %d: must be at least 1", c.Workers)
	}
	if c.Workers > workerpool.MaxSize {
		return fmt.Errorf("--workers %d: at most %d", c.Workers, workerpool.MaxSize)
	}
	for _, p := range c.WatchPaths {
		if p == "" {
			return errors.New("--watch-path needs a file or directory")
		}
	}
	if c.MaxMemory < 0 {
		return fmt.Errorf("--max-memory %d: must be positive", c.MaxMemory)
	}
	if c.Watchdog < 0 {
		return fmt.Errorf("--watchdog %s: must be positive", c.Watchdog)
	}
	if c.WorkerOutput != "" {
		if _, ok := workerpool.ParseOutputMode(string(c.WorkerOutput)); !ok {
			return fmt.Errorf("--worker-output %q: use prefix, json or raw", c.WorkerOutput)
		}
	}
	switch c.Balance {
	case "", "auto", "round-robin", "random", "shared":
	default:
		return fmt.Errorf("--balance %q: use round-robin, random, shared or auto", c.Balance)
	}
	if err := c.CheckStandby(); err != nil {
		return err
	}
	if err := c.CheckProbes(); err != nil {
		return err
	}
	if c.Metrics != "" {
		if err := checkHostPort(c.Metrics); err != nil {
			return fmt.Errorf("--metrics %q: %v", c.Metrics, err)
		}
	}
	return nil
}

// CatchSignals starts catching the signals a primary acts on: HUP (deploy),
// TERM and INT (graceful shutdown), TTIN and TTOU (one worker more, one
// less). Call it first in main, before any other
// work, so that a signal sent during start-up is queued rather than fatal,
// and pass the channel as Config.Signals.
//
// It also catches SIGPIPE, so that a write to a stdout or stderr whose
// reader has gone (journald restarted, a pipe into a pager closed) fails
// with EPIPE instead of killing the primary and with it every worker. A
// caught signal, unlike an ignored one, is reset to its default in the
// workers at exec.
func CatchSignals() chan os.Signal {
	ch := make(chan os.Signal, 16)
	signal.Notify(ch, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT, syscall.SIGTTIN, syscall.SIGTTOU)
	signal.Notify(make(chan os.Signal, 1), syscall.SIGPIPE)
	return ch
}

// workerOutput is what forwards the workers' stdout and stderr.
func (c *Config) workerOutput() *workerpool.Output {
	var stdout io.Writer = os.Stdout
	if c.WorkerStdout != nil {
		stdout = c.WorkerStdout
	}
	stderr := c.WorkerStderr
	if stderr == nil {
		stderr = os.Stderr
	}
	return &workerpool.Output{Mode: c.WorkerOutput, Stdout: stdout, Stderr: stderr, Encoder: c.WorkerOutputEncoder,
		Fields: []zap.Field{zap.Int("primary", os.Getpid())}}
}
