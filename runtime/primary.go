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
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cloudflare/tableflip"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/handoff-dev/handoff/workerpool"
)

type primary struct {
	cfg    Config
	log    *zap.Logger
	upg    *tableflip.Upgrader
	pool   *workerpool.Pool
	dir    string
	gen    int // the last generation handed out; only the deploying goroutine changes it
	selfID fileID
	env    []string
	// successor is the primary that took over, once one has.
	successor *process
	// owner is set once this primary owns the listeners: at once for the
	// first primary, after the hand-over for a new one.
	owner bool
	// reqs carries jobs asked for by other parts of the primary (see ask);
	// closed is closed when Run returns, after which nothing reads reqs.
	reqs   chan request
	closed chan struct{}
	// stop ends Run's context: a graceful shutdown asked for on the
	// control socket.
	stop context.CancelCauseFunc
	ctl  *controlServer
	// current is the spec of the last start or deploy that finished: what
	// new slots run. Only the loop's jobs use it.
	current *workerpool.Spec

	// For status, under stmu.
	stmu    sync.Mutex
	started time.Time
	addrs   []string
	serving int            // generation of the last start or deploy that finished
	upgrade *UpgradeStatus // the deploy in progress, if any
	// metrics and web are nil without --metrics.
	metrics *metrics
	web     *metricsServer
}

// ask hands r to the primary's loop. If the primary has stopped, r is
// answered with ErrShuttingDown.
func (p *primary) ask(r request) {
	select {
	case p.reqs <- r:
	case <-p.closed:
		if r.done != nil {
			r.done <- ErrShuttingDown
		}
	}
}

// errHandedOver ends a deploy after which another primary owns the
// listeners.
var errHandedOver = errors.New("handed over to a new primary")

// Run is a primary: it binds cfg.Listeners (or inherits them from the
// primary that started it with tableflip), runs cfg.Workers workers of
// cfg.Command, deploys on SIGHUP and shuts down gracefully on TERM or INT
// or when ctx ends. It returns nil after a graceful shutdown or after
// handing over to a new primary, and an error, with nothing left running,
// when it cannot start.
func Run(ctx context.Context, cfg Config) (err error) {
	sigs := cfg.Signals
	if sigs == nil {
		ch := CatchSignals()
		defer signal.Stop(ch)
		sigs = ch
	}
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return err
	}
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	p := &primary{cfg: cfg, log: cfg.Logger.With(zap.Int("primary", os.Getpid())), env: workerEnv(os.Environ()),
		reqs: make(chan request), closed: make(chan struct{}), stop: stop, started: time.Now()}
	defer close(p.closed)
	p.selfID, _ = statID("/proc/self/exe")

	path, err := ResolveCommand(cfg.Command[0])
	if err != nil {
		return err
	}
	if err := checkPIDFileDir(cfg.PIDFile); err != nil {
		return err
	}
	watcher, err := p.newWatcher(path)
	if err != nil {
		return err
	}
	// Until it runs, stopping the watch is closing it.
	stopWatch := func() {
		if watcher != nil {
			watcher.Close()
		}
	}
	defer func() { stopWatch() }()
	cred, err := workerCredential(cfg.User)
	if err != nil {
		return err
	}
	// tableflip's upgrade bound: the new primary calls Ready after rolling
	// every worker, each of which may take up to ReadyTimeout; one that
	// fails drains its new worker and rolls back before it exits.
	p.upg, err = tableflip.New(tableflip.Options{
		PIDFile:        cfg.PIDFile,
		UpgradeTimeout: time.Duration(cfg.Workers+1)*cfg.ReadyTimeout + 2*cfg.DrainTimeout + time.Minute,
	})
	if err != nil {
		return fmt.Errorf("cannot set up upgrades: %v", err)
	}
	defer func() {
		p.stopUpgrader()
		// Last: the socket file is gone (or a new primary's), and a stop
		// request's client sees its connection end now.
		p.ctl.close()
	}()

	// The metrics socket first: its bind error is the one line of a
	// failed start, before any "listening" event.
	var metricsLn net.Listener
	if cfg.Metrics != "" {
		if metricsLn, err = p.listenMetrics(); err != nil {
			return err
		}
		defer metricsLn.Close()
	}
	fds, names, err := p.listen()
	if err != nil {
		return err
	}
	defer func() {
		for _, fd := range fds {
			syscall.Close(fd)
		}
	}()
	p.ctl, err = p.listenControl(cfg.Listeners[0].Network, p.addrs[0])
	if err != nil {
		return err
	}
	p.logListening()

	p.dir, err = privateDir()
	if err != nil {
		return fmt.Errorf("cannot create a private directory for worker sockets: %v", err)
	}
	defer os.RemoveAll(p.dir)
	if cred != nil {
		// The workers' user must reach its notify socket, which is its
		// own (mode 0600); it may not list the directory. The hand-over
		// socket there accepts only this primary's user.
		if err := os.Chmod(p.dir, 0o711); err != nil {
			return fmt.Errorf("cannot open the private directory to the workers' user: %v", err)
		}
		p.log.Info("workers run as", zap.String("user", cfg.User), zap.Uint32("uid", cred.Uid), zap.Uint32("gid", cred.Gid))
	}

	launcher := &workerpool.OSLauncher{
		Listeners:  fds,
		Names:      names,
		Ready:      cfg.Ready,
		ReadyDelay: cfg.ReadyDelay,
		NotifyDir:  p.dir,
		Stdout:     cfg.WorkerStdout,
		Stderr:     cfg.WorkerStderr,
		Logger:     p.log,
		Watchdog:   cfg.Watchdog,
		Credential: cred,
	}
	if cfg.IPC || cfg.Hub != nil {
		launcher.Channel = true
	}
	poolCfg := workerpool.Config{
		Size:         cfg.Workers,
		Launcher:     launcher,
		ReadyTimeout: cfg.ReadyTimeout,
		DrainTimeout: cfg.DrainTimeout,
		StopSignal:   cfg.StopSignal,
		Logger:       p.log,
	}
	if metricsLn != nil {
		p.log.Info("metrics listening", zap.String("addr", metricsLn.Addr().String()))
		p.metrics = newMetrics()
		poolCfg.Observer = p.metrics
	}
	p.pool = workerpool.New(poolCfg)
	if metricsLn != nil {
		p.metrics.collect(p.pool)
		p.web = &metricsServer{m: p.metrics, pool: p.pool}
		defer p.web.stop()
	}
	if os.Getpid() == 1 {
		// A container without an init: orphans of the whole namespace
		// come to this process, until its very end.
		p.log.Info("running as PID 1: reaping orphans")
		rctx, stopReaping := context.WithCancel(context.Background())
		reaperDone := make(chan struct{})
		defer func() { stopReaping(); <-reaperDone }()
		go func() { defer close(reaperDone); p.reapOrphans(rctx) }()
	}
	if cfg.Hub != nil {
		launcher.OnMessage = cfg.Hub.deliver
		cfg.Hub.attach(p.pool)
	}

	// Every primary watches, a new one after a self-upgrade too: its
	// changes queue a deploy like a HUP, also while it starts or takes over.
	stopWatch = p.runWatcher(watcher, path)

	if p.upg.HasParent() {
		return p.takeOver(ctx, sigs, path, metricsLn)
	}
	if metricsLn != nil {
		// From the start: /healthz answers, /readyz says 503 until the
		// first workers are ready.
		p.web.serve(metricsLn, p.log)
	}

	p.owner = true
	p.gen = 1
	spec := p.spec(path, p.gen)
	p.ctl.serve()
	queue, stopSig, err := p.underSignals(ctx, sigs, "the primary is starting", func(ctx context.Context) error {
		return p.pool.Start(ctx, spec)
	})
	if stopSig != nil {
		// What did start gets drained; a start that failed left nothing.
		return p.shutdown()
	}
	if err != nil {
		queue.finish(ErrShuttingDown)
		return startFailure(err)
	}
	if err := p.upg.Ready(); err != nil {
		p.pool.Shutdown()
		return fmt.Errorf("--pid-file %s: %v", cfg.PIDFile, unwrapAll(err))
	}
	p.current = spec
	p.setServing(p.gen)
	p.log.Info("primary ready", zap.Int("workers", p.pool.Size()), zap.Int("generation", p.gen))
	p.metrics.setGeneration(p.gen)
	notifySystemd("READY=1\nSTATUS=serving generation 1\nMAINPID=" + strconv.Itoa(os.Getpid()))
	return p.loop(ctx, sigs, queue)
}

// stopUpgrader stops tableflip as the primary returns. Stop only asks:
// tableflip closes its listeners, and removes unix socket files, in its
// own goroutine, which must be done before the process exits. A new
// primary that never took over leaves them alone: they are the old
// primary's, which still serves on them. A first primary that failed to
// start stops it too: the listeners it did bind close, and a unix
// socket file it created goes.
func (p *primary) stopUpgrader() {
	if !p.owner && p.upg.HasParent() {
		return
	}
	p.upg.Stop()
	<-p.upg.Exit()
}

func (p *primary) shutdown() error {
	notifySystemd("STOPPING=1")
	if p.web != nil {
		p.web.stopping.Store(true)
	}
	p.pool.Shutdown()
	if p.cfg.PIDFile != "" {
		if b, err := os.ReadFile(p.cfg.PIDFile); err == nil && strings.TrimSpace(string(b)) == strconv.Itoa(os.Getpid()) {
			os.Remove(p.cfg.PIDFile)
		}
	}
	p.log.Info("shutdown finished")
	return nil
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
