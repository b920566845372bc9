//go:build linux

package runtime

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/cloudflare/tableflip"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/handoff-dev/handoff/internal/adopt"
	"github.com/handoff-dev/handoff/internal/metrics"
	"github.com/handoff-dev/handoff/internal/shim"
	"github.com/handoff-dev/handoff/reload"
	"github.com/handoff-dev/handoff/workerpool"
)

// Run is a primary: it binds cfg.Listeners (or inherits them from the
// primary that started it with tableflip), runs cfg.Workers workers of
// cfg.Command, deploys on SIGHUP and shuts down gracefully on TERM or INT
// or when ctx ends. It returns nil after a graceful shutdown or after
// handing over to a new primary, and an error, with nothing left running,
// when it cannot start.
//
// It reads as what happens: set up (bind, the private directory, the
// pool), start the first workers or take over from the old primary, run
// the job loop until a shutdown or a hand-over, and close what the set-up
// opened (resources.close, in the order it gives).
func Run(ctx context.Context, cfg Config) error {
	var res resources
	defer res.close()
	sigs := cfg.Signals
	if sigs == nil {
		ch := CatchSignals()
		res.ownSignals = ch
		sigs = ch
	}
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	p := &primary{cfg: cfg, log: cfg.Logger.With(zap.Int("primary", os.Getpid())), env: shim.WorkerEnv(os.Environ()),
		reqs: make(chan request), closed: make(chan struct{}), askShutdown: cancel}
	p.book.started = time.Now()
	res.p, res.cancel = p, cancel
	p.selfID, _ = statID("/proc/self/exe")

	path, metricsLn, err := p.setUp(&res)
	if err != nil {
		return err
	}
	// Every primary watches, a new one after a self-upgrade too: its
	// changes queue a deploy like a HUP, also while it starts or takes over.
	res.stopWatch = p.runWatcher(res.watcher, path)

	if p.upg.HasParent() {
		return p.takeOver(ctx, sigs, path, metricsLn)
	}
	return p.start(ctx, sigs, path, metricsLn)
}

// resources are what Run sets up and must close, whatever way it returns:
// after a shutdown, a hand-over, or a start that failed half-way (a field
// not set up yet is skipped).
type resources struct {
	p          *primary
	ownSignals chan os.Signal // caught by Run itself (no Config.Signals)
	cancel     context.CancelCauseFunc
	watcher    *reload.Watcher // nil without --watch
	stopWatch  func()          // set once the watcher runs
	upgrader   bool            // tableflip is set up
	metricsLn  net.Listener
	fds        []int              // the workers' duplicates of the listeners
	adopter    *adopt.Supervisor  // bind adoption (nil: off)
	dir        string             // the private directory
	output     *workerpool.Output // the workers' forwarded output (nil: raw)
	stopReaper func()             // the orphan reaper
}

// close releases everything, in this order:
//
//  1. The orphan reaper and the metrics server stop: the workers
//     are gone (the pool has shut down or been handed over), nothing is
//     left to reap or to report.
//  2. The workers' last lines are forwarded (--worker-output prefix or
//     json): their pipes end with them, a partial last line included.
//  3. The private directory (notify and hand-over sockets) goes, bind
//     adoption stops (its notification fds close), and the workers'
//     duplicates of the listeners and this process's metrics listener
//     close.
//  4. tableflip stops (closeUpgrader): it closes its listeners and removes
//     the unix socket files this primary created, unless a new primary
//     owns them; Run waits for that.
//  5. The control socket closes, after the socket file is gone (or is a
//     new primary's): a stop request's client sees its connection end
//     only now, so its EOF means "exited".
//  6. The watcher stops (or is closed, if it never ran), then requests
//     are refused (ask answers ErrShuttingDown), Run's context ends and
//     signals are no longer caught.
func (r *resources) close() {
	p := r.p
	if r.stopReaper != nil {
		r.stopReaper()
	}
	if p != nil {
		p.web.Close()
	}
	// The workers' last lines (after a hand-over, those of the old
	// workers that drained): the workers are gone, their pipes end.
	r.output.Wait(outputIdle)
	if r.dir != "" {
		os.RemoveAll(r.dir)
	}
	// Before the listener fds it installs in workers.
	r.adopter.Close()
	for _, fd := range r.fds {
		syscall.Close(fd)
	}
	if p != nil && p.sockets != nil {
		// Left to a new primary that took over, or to the old one that
		// serves on if this one never did.
		p.sockets.CloseAll(p.successor != nil || (!p.owner && p.upg.HasParent()))
	}
	if r.metricsLn != nil {
		r.metricsLn.Close()
	}
	if r.upgrader {
		p.closeUpgrader()
	}
	if p != nil {
		// The workers are gone, and tableflip holds its own copies of
		// what was handed to a new primary.
		p.pins.closeAll()
	}
	if p != nil {
		p.closeControl()
	}
	if r.stopWatch != nil {
		r.stopWatch()
	} else if r.watcher != nil {
		r.watcher.Close()
	}
	if p != nil {
		close(p.closed)
	}
	if r.cancel != nil {
		r.cancel(nil)
	}
	if r.ownSignals != nil {
		signal.Stop(r.ownSignals)
	}
}

// setUp makes everything the primary needs before a worker starts, each
// step recorded in res: it resolves the command, binds (or inherits) the
// metrics socket, the listeners and the control socket, makes the private
// directory and the pool. It returns the resolved command and the metrics
// listener (nil without --metrics).
func (p *primary) setUp(res *resources) (path string, metricsLn net.Listener, err error) {
	path, cred, err := p.setUpCommand(res)
	if err != nil {
		return "", nil, err
	}
	if err := p.setUpUpgrader(res); err != nil {
		return "", nil, err
	}
	fds, names, err := p.bindAll(res, cred)
	if err != nil {
		return "", nil, err
	}
	if err := p.makeDir(res, cred); err != nil {
		return "", nil, err
	}
	p.makePool(res, p.newLauncher(res, fds, names, cred))
	return path, res.metricsLn, nil
}

// setUpCommand resolves the worker command, checks the pid file's
// directory, makes the watcher (--watch) and the workers' credential
// (--user) and environment.
func (p *primary) setUpCommand(res *resources) (path string, cred *syscall.Credential, err error) {
	cfg := p.cfg
	path, err = resolveCommand(cfg.Command[0])
	if err != nil {
		return "", nil, err
	}
	if err := checkPIDFileDir(cfg.PIDFile); err != nil {
		return "", nil, err
	}
	if res.watcher, err = p.newWatcher(path); err != nil {
		return "", nil, err
	}
	cred, userEnv, err := workerCredential(cfg.User)
	if err != nil {
		return "", nil, err
	}
	p.env = replaceEnv(p.env, userEnv)
	return path, cred, nil
}

// setUpUpgrader sets up tableflip. Its own upgrade bound is fixed here,
// for every upgrade; the real one depends on the pool's size when an
// upgrade starts, which scaling changes: upgradeSelf enforces it
// (upgradeBound).
func (p *primary) setUpUpgrader(res *resources) error {
	var err error
	p.upg, err = tableflip.New(tableflip.Options{
		PIDFile:        p.cfg.PIDFile,
		UpgradeTimeout: tableflipNever,
	})
	if err != nil {
		return fmt.Errorf("cannot set up upgrades: %v", err)
	}
	res.upgrader = true
	return nil
}

// bindAll binds (or inherits from tableflip) the metrics socket
// (res.metricsLn), the listeners (the workers' fds, res.fds, and their
// names) and the control socket, sets up bind adoption (res.adopter) and
// logs what listens and how it is balanced.
func (p *primary) bindAll(res *resources, cred *syscall.Credential) (fds []int, names []string, err error) {
	cfg := p.cfg
	// The metrics socket first: its bind error is the one line of a
	// failed start, before any "listening" event.
	if cfg.Metrics != "" {
		metricsLn, err := p.listenMetrics()
		if err != nil {
			return nil, nil, err
		}
		res.metricsLn = metricsLn
	}
	fds, names, err = p.listen()
	if err != nil {
		return nil, nil, err
	}
	res.fds = fds
	if (p.cfg.ReadyProbe != nil || p.cfg.Health != nil) && p.sockets == nil {
		return nil, nil, fmt.Errorf("HTTP probes (--ready http:, --health) go through each worker's own socket, and here every worker shares one (%s): use --ready notify, bind or delay:DURATION", p.balance.why)
	}
	p.ctl, err = p.listenControl(cfg.Listeners[0].Network, p.addrs[0])
	if err != nil {
		return nil, nil, err
	}
	if res.adopter, err = p.setUpBinds(fds, cred); err != nil {
		return nil, nil, err
	}
	p.logListening()
	p.logBalance(p.balance.mode, p.balance.why)
	if p.cfg.Standby && p.sockets == nil {
		p.log.Warn("no standby", zap.String("reason", "--standby needs a socket per worker and balancing is shared ("+p.balance.why+"): the last old worker of a deploy retires like the others"))
	}
	p.cfg.logWorkers(p.log)
	return fds, names, nil
}

// makeDir makes the private directory (res.dir) for the workers' notify
// sockets and the hand-over socket, open to the workers' user (--user).
func (p *primary) makeDir(res *resources, cred *syscall.Credential) error {
	var err error
	p.dir, err = privateDir()
	if err != nil {
		return fmt.Errorf("cannot create a private directory for worker sockets: %v", err)
	}
	res.dir = p.dir
	if cred != nil {
		// The workers' user must reach its notify socket, which is its
		// own (mode 0600); it may not list the directory. The hand-over
		// socket there accepts only this primary's user.
		if err := os.Chmod(p.dir, 0o711); err != nil {
			return fmt.Errorf("cannot open the private directory to the workers' user: %v", err)
		}
		p.log.Info("workers run as", zap.String("user", p.cfg.User), zap.Uint32("uid", cred.Uid), zap.Uint32("gid", cred.Gid))
	}
	return nil
}

// newLauncher is the launcher of the workers: the listeners' fds, the
// readiness, the output, the credential and bind adoption; res.output is
// its output.
func (p *primary) newLauncher(res *resources, fds []int, names []string, cred *syscall.Credential) *workerpool.OSLauncher {
	cfg := p.cfg
	launcher := &workerpool.OSLauncher{
		Listeners:  fds,
		Names:      names,
		Ready:      cfg.Ready,
		ReadyDelay: cfg.ReadyDelay,
		NotifyDir:  p.dir,
		Stdout:     cfg.WorkerStdout,
		Stderr:     cfg.WorkerStderr,
		Output:     cfg.workerOutput(),
		Logger:     p.log,
		Watchdog:   cfg.Watchdog,
		Credential: cred,
		PrepareFD:  p.adoptFD(res.adopter),
	}
	if cfg.IPC || cfg.Hub != nil {
		launcher.Channel = true
	}
	if cfg.ReadyProbe != nil {
		launcher.Ready, launcher.Probe = workerpool.ReadyProbe, p.readyProbe
	}
	res.output = launcher.Output
	return launcher
}

// makePool makes the pool over launcher, with the metrics (served on
// res.metricsLn) and the message hub (library mode) attached, and starts the
// orphan reaper (res.stopReaper).
func (p *primary) makePool(res *resources, launcher *workerpool.OSLauncher) {
	metricsLn := res.metricsLn
	cfg := p.cfg
	poolCfg := workerpool.Config{
		Size:         cfg.Workers,
		Launcher:     launcher,
		ReadyTimeout: cfg.ReadyTimeout,
		DrainTimeout: cfg.DrainTimeout,
		StopSignal:   cfg.StopSignal,
		Logger:       p.log,
	}
	if p.sockets != nil {
		poolCfg.Sockets = p.sockets
	}
	if metricsLn != nil {
		p.log.Info("metrics listening", zap.String("addr", metricsLn.Addr().String()))
		p.metrics = metrics.New()
		poolCfg.Observer = p.metrics
	}
	p.pool = workerpool.New(poolCfg)
	if metricsLn != nil {
		p.metrics.Collect(p.pool, p.balance.mode, p.probes.lastProbe)
		p.web = metrics.NewServer(p.metrics, p.pool)
	}
	res.stopReaper = p.startReaper()
	if cfg.Hub != nil {
		launcher.OnMessage = cfg.Hub.deliver
		cfg.Hub.attach(p.pool, p.log, p.upg.Fds)
	}
}

// start is a first primary: it fills every slot with a worker of
// generation 1, then runs the job loop.
func (p *primary) start(ctx context.Context, sigs <-chan os.Signal, path string, metricsLn net.Listener) error {
	if metricsLn != nil {
		// From the start: /healthz answers, /readyz says 503 until the
		// first workers are ready.
		p.web.Serve(metricsLn, p.log)
	}

	p.owner = true
	p.gen = 1
	spec := p.spec(path, p.gen)
	pf, err := p.pinCommand(path)
	if err != nil {
		return fmt.Errorf("cannot pin the worker command: %v", err)
	}
	spec.Pin = pf
	p.ctl.Serve()
	queue, shutdownSig, err := p.underSignals(ctx, sigs, "the primary is starting", func(ctx context.Context) error {
		return p.pool.Start(ctx, spec)
	})
	if shutdownSig != nil {
		// What did start gets drained; a start that failed left nothing.
		return p.shutdown()
	}
	if err != nil {
		queue.finish(ErrShuttingDown)
		return errors.New("first workers failed: " + failureLine(err) + p.bindAdvice(err))
	}
	if err := p.upg.Ready(); err != nil {
		p.pool.Shutdown()
		return fmt.Errorf("--pid-file %s: %v", p.cfg.PIDFile, unwrapAll(err))
	}
	p.cur = &generation{gen: p.gen, spec: spec}
	p.keepGenerations()
	p.book.setServing(p.gen)
	p.log.Info("primary ready", zap.Int("workers", p.pool.Size()), zap.Int("generation", p.gen))
	p.metrics.SetGeneration(p.gen)
	notifySystemd("READY=1\nSTATUS=serving generation 1\nMAINPID=" + strconv.Itoa(os.Getpid()))
	return p.loop(ctx, sigs, queue)
}

// closeUpgrader stops tableflip as the primary returns. Stop only asks:
// tableflip closes its listeners, and removes unix socket files, in its
// own goroutine, which must be done before the process exits. A new
// primary that never took over leaves them alone: they are the old
// primary's, which still serves on them. A first primary that failed to
// start stops it too: the listeners it did bind close, and a unix
// socket file it created goes.
func (p *primary) closeUpgrader() {
	if !p.owner && p.upg.HasParent() {
		return
	}
	p.upg.Stop()
	<-p.upg.Exit()
	p.removeSocketFiles()
}

// checkPIDFileDir fails early, before anything starts, when the pid file
// could not be written.
func checkPIDFileDir(path string) error {
	if path == "" {
		return nil
	}
	dir := filepath.Dir(path)
	fi, err := os.Stat(dir)
	if err != nil || !fi.IsDir() {
		return fmt.Errorf("--pid-file %s: the directory %s does not exist", path, dir)
	}
	if unix.Access(dir, unix.W_OK) != nil {
		return fmt.Errorf("--pid-file %s: the directory %s is not writable", path, dir)
	}
	return nil
}
