package runtime

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cloudflare/tableflip"
	"github.com/coreos/go-systemd/v22/daemon"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/handoff-dev/handoff/workerpool"
)

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
	cfg.logWorkers(p.log)

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
		Output:     cfg.workerOutput(),
		Logger:     p.log,
		Watchdog:   cfg.Watchdog,
		Credential: cred,
	}
	if cfg.IPC || cfg.Hub != nil {
		launcher.Channel = true
	}
	// As Run returns, once the workers are gone: their last lines (after
	// a hand-over, the lines of the old workers that drained).
	defer launcher.Output.Wait(outputIdle)
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

// underSignals runs fn while acting on signals and requests, for the
// phases before the deploy loop runs (start-up, a new primary's take-over):
// a HUP or a request is queued for the loop, a TERM or INT cancels fn's
// context and is returned as stop, as is the end of ctx (as TERM).
func (p *primary) underSignals(ctx context.Context, sigs <-chan os.Signal, phase string, fn func(context.Context) error) (queue jobQueue, stop os.Signal, err error) {
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- fn(fctx) }()
	add := func(r request) {
		if !queue.add(r) || r.run != nil {
			return
		}
		p.log.Info("upgrade queued", zap.String("why", phase))
	}
	ctxDone := ctx.Done()
	for {
		select {
		case <-ctxDone:
			ctxDone = nil
			if stop == nil {
				p.log.Info("shutdown started", zap.String("why", context.Cause(ctx).Error()))
				stop = syscall.SIGTERM
			}
		case err := <-done:
			if stop == nil && ctx.Err() != nil {
				stop = syscall.SIGTERM
			}
			if stop != nil {
				queue.finish(ErrShuttingDown)
			}
			return queue, stop, err
		case r := <-p.reqs:
			add(r)
		case sig := <-sigs:
			if r, ok := signalRequest(sig, p.scaleBy); ok {
				add(r)
				continue
			}
			if stop == nil {
				p.log.Info("shutdown started", zap.String("signal", sig.String()))
				stop = sig
				cancel()
			}
		}
	}
}

// startFailure makes one line of a failed first generation.
func startFailure(err error) error {
	var se *workerpool.StartError
	if errors.As(err, &se) {
		msg := "first workers failed: " + se.Error()
		if last := lastLine(se.Exit.StderrTail); last != "" {
			msg += "; its stderr ends: " + last
		}
		return errors.New(msg)
	}
	return fmt.Errorf("first workers failed: %v", err)
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

func lastLine(s string) string {
	s = strings.TrimRight(s, "\n")
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return s
}

// listen binds (or inherits) every listener and returns raw duplicates of
// their fds for the workers, with their names.
func (p *primary) listen() (fds []int, names []string, err error) {
	var addrs []string
	defer func() {
		if err != nil {
			for _, fd := range fds {
				syscall.Close(fd)
			}
		}
	}()
	for _, l := range p.cfg.Listeners {
		if l.Network == "unix" && !p.upg.HasParent() {
			if err := removeStaleSocket(l.Address); err != nil {
				return fds, nil, fmt.Errorf("listen unix:%s: %v", l.Address, err)
			}
		}
		// tableflip flattens the bind error into text: keep the original,
		// which listenError turns into advice.
		var bindErr error
		ln, err := p.upg.ListenWithCallback(l.Network, l.Address, func(network, addr string) (net.Listener, error) {
			ln, err := net.Listen(network, addr)
			bindErr = err
			return ln, err
		})
		if err != nil {
			if bindErr != nil {
				err = bindErr
			}
			return fds, nil, listenError(l, err)
		}
		fd, err := rawFd(ln)
		addr := ln.Addr().String()
		// tableflip keeps its own duplicate for upgrades and the workers
		// get fd; this one would only linger until a finalizer closed it.
		ln.Close()
		if err != nil {
			return fds, nil, fmt.Errorf("listen %s: %v", l.Address, err)
		}
		fds = append(fds, fd)
		names = append(names, l.Name)
		addrs = append(addrs, addr)
	}
	p.addrs = addrs
	return fds, names, nil
}

// logListening logs the bound listeners, once the control socket is set
// up too: a failed start prints its one error line and nothing else.
func (p *primary) logListening() {
	for i, l := range p.cfg.Listeners {
		p.log.Info("listening", zap.String("name", l.Name), zap.String("network", l.Network), zap.String("addr", p.addrs[i]))
	}
}

// listenMetrics binds (or inherits) the --metrics socket through
// tableflip, so that a new primary serves it on without a gap. It is never
// passed to a worker: workers get only the raw fds of cfg.Listeners.
//
// tableflip finds an inherited socket by network and address, so the
// metrics socket gets a name of its own: a --listen of the same address
// spelling (say two :0) must not be taken for it.
func (p *primary) listenMetrics() (net.Listener, error) {
	var bindErr error
	ln, err := p.upg.ListenWithCallback("tcp", "handoff-metrics "+p.cfg.Metrics, func(network, _ string) (net.Listener, error) {
		ln, err := net.Listen(network, p.cfg.Metrics)
		bindErr = err
		return ln, err
	})
	if err != nil {
		if bindErr != nil {
			err = bindErr
		}
		return nil, fmt.Errorf("--metrics: %v", listenError(Listener{Network: "tcp", Address: p.cfg.Metrics}, err))
	}
	return ln, nil
}

func (p *primary) spec(path string, gen int) *workerpool.Spec {
	args := append([]string(nil), p.cfg.Command...)
	return &workerpool.Spec{Path: path, Args: args, Env: p.env, Generation: gen}
}

// loop acts on signals and requests and runs their jobs one at a time; a
// deploy asked for while one runs is queued, and further ones fold into
// it (see deployLoop).
func (p *primary) loop(ctx context.Context, sigs <-chan os.Signal, queue jobQueue) error {
	wctx, stopRecycling := context.WithCancel(ctx)
	recycleDone := make(chan struct{})
	defer func() { stopRecycling(); <-recycleDone }()
	go func() { defer close(recycleDone); p.watchWorkers(wctx) }()
	shutdown := func() error {
		stopRecycling()
		if p.successor != nil {
			// The hand-over completed as the stop came (upgradeSelf
			// passes a stop on only while it waits): the new primary
			// owns the listeners and is the one to stop.
			p.log.Info("stopping the new primary", zap.Int("new_primary", p.successor.pid))
			p.successor.signal(syscall.SIGTERM)
			p.successor.release()
		}
		return p.shutdown()
	}
	return deployLoop(ctx, p.log, sigs, p.reqs, queue, p.deploy, p.scaleBy, shutdown, func(pending bool) error {
		stopRecycling()
		return p.retireAfterHandOver(sigs, pending)
	})
}

// deploy rolls the workers onto the command now on disk, first upgrading
// the primary itself when its executable has changed.
func (p *primary) deploy(ctx context.Context) (err error) {
	p.gen++
	gen := p.gen
	start := time.Now()
	notifySystemd(fmt.Sprintf("RELOADING=1\nMONOTONIC_USEC=%d\nSTATUS=deploying generation %d", monotonicUsec(), gen))
	kind := kindWorkers
	defer func() {
		// After a hand-over the new primary, now the main process, has
		// said READY=1 itself; after a cancelled deploy the primary is
		// stopping.
		if ctx.Err() == nil && !errors.Is(err, errHandedOver) {
			notifySystemd(fmt.Sprintf("READY=1\nSTATUS=serving generation %d", gen))
		}
		// The new primary counts a hand-over that succeeded.
		if !errors.Is(err, errHandedOver) {
			p.metrics.upgraded(kind, err, time.Since(start), gen)
		}
	}()

	defer p.setUpgrade(nil)
	if p.selfChanged() {
		kind = kindPrimary
		p.setUpgrade(&UpgradeStatus{Generation: gen, Kind: "primary", Started: start})
		p.log.Info("upgrade started", zap.Int("generation", gen), zap.String("kind", "primary"))
		err := p.upgradeSelf(ctx, gen)
		// A binary written a moment ago may still be open for writing
		// somewhere (golang/go#22315); tableflip reports it as text.
		for end := time.Now().Add(time.Second); err != nil && ctx.Err() == nil && time.Now().Before(end) &&
			strings.Contains(err.Error(), syscall.ETXTBSY.Error()); {
			time.Sleep(20 * time.Millisecond)
			err = p.upgradeSelf(ctx, gen)
		}
		if err == nil {
			p.setServing(gen)
			return errHandedOver
		}
		p.log.Error("upgrade aborted", zap.Int("generation", gen), zap.String("reason", "new primary: "+err.Error()))
		return err
	}

	p.setUpgrade(&UpgradeStatus{Generation: gen, Kind: "workers", Started: start})
	p.log.Info("upgrade started", zap.Int("generation", gen), zap.String("kind", "workers"))
	path, err := ResolveCommand(p.cfg.Command[0])
	if err != nil {
		p.log.Error("upgrade aborted", zap.Int("generation", gen), zap.String("reason", err.Error()))
		return err
	}
	spec := p.spec(path, gen)
	err = p.pool.Roll(ctx, spec, nil, p.progress(gen))
	if err != nil {
		p.logAbort(gen, err)
		return err
	}
	p.current = spec
	p.setServing(gen)
	p.log.Info("upgrade finished", zap.Int("generation", gen), zap.Duration("duration", time.Since(start)))
	return nil
}

func (p *primary) progress(gen int) func(step, steps int) {
	return func(step, steps int) {
		p.upgradeStep(step, steps)
		p.log.Info("upgrade step", zap.Int("generation", gen), zap.Int("step", step), zap.Int("steps", steps))
	}
}

// scaleBy makes the job of a TTIN (+1) or TTOU (-1).
func (p *primary) scaleBy(delta int) func(context.Context) error {
	return p.scaleJob(0, delta, nil)
}

func (p *primary) setServing(gen int) {
	p.stmu.Lock()
	p.serving = gen
	p.stmu.Unlock()
}

func (p *primary) logAbort(gen int, err error) {
	fields := []zap.Field{zap.Int("generation", gen), zap.String("reason", err.Error())}
	var se *workerpool.StartError
	if errors.As(err, &se) {
		fields = append(fields, zap.Int("slot", se.Slot), zap.Int("pid", se.Pid),
			zap.String("status", se.Exit.Status), zap.String("stderr", se.Exit.StderrTail))
	}
	p.log.Error("upgrade aborted", fields...)
}

// upgradeSelf starts the executable now on disk as a new primary through
// tableflip and hands the workers over to it, slot by slot. It returns nil
// once the new primary owns everything.
func (p *primary) upgradeSelf(ctx context.Context, gen int) error {
	if err := p.upg.WaitForParent(ctx); err != nil {
		return fmt.Errorf("the previous primary has not exited yet: %v", err)
	}
	ln, err := listenHandover(p.dir)
	if err != nil {
		return err
	}
	os.Setenv(envHandover, ln.Addr().String())
	defer os.Unsetenv(envHandover)

	type handover struct {
		peer *peer
		proc *process
	}
	accepted := make(chan handover, 1)
	acceptDone := make(chan struct{})
	var (
		mu      sync.Mutex
		newProc *process // the connected new primary, unless ctx ended first
	)
	go func() {
		defer close(acceptDone)
		conn, pid, err := acceptHandover(ln)
		if err != nil {
			return
		}
		proc := openProcess(pid)
		mu.Lock()
		if ctx.Err() != nil {
			mu.Unlock()
			conn.Close()
			proc.release()
			return
		}
		newProc = proc
		mu.Unlock()
		p.stmu.Lock()
		if p.upgrade != nil {
			p.upgrade.NewPrimary = pid
		}
		p.stmu.Unlock()
		var pr *peer
		pr = newPeer(conn, p.pool.HandOver, func() error {
			if err := ctx.Err(); err != nil {
				// Shutting down: the new primary drains what it has.
				return err
			}
			p.log.Info("rolling back a failed hand-over", zap.Int("new_primary", pid))
			return p.pool.RollBack(ctx, pr.retire)
		}, p.upgradeStep)
		accepted <- handover{pr, proc}
		pr.send(message{Op: "state", Generation: gen, Size: p.pool.Size()})
	}()

	// tableflip's Upgrade takes no context. On a shutdown asked for
	// meanwhile, a connected new primary gets TERM: it ends the hand-over
	// and drains its workers like any primary that shuts down. Only one
	// that has not connected yet (it has no worker), or does not exit in
	// time, is killed, with its workers, by stopping the upgrader.
	upgraded := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
		case <-upgraded:
			return
		}
		mu.Lock()
		proc := newProc
		mu.Unlock()
		if proc != nil && proc.signal(syscall.SIGTERM) == nil {
			p.log.Info("stopping the new primary", zap.Int("new_primary", proc.pid))
			t := time.NewTimer(2*p.cfg.DrainTimeout + 10*time.Second)
			defer t.Stop()
			select {
			case <-upgraded:
				return
			case <-t.C:
				p.log.Warn("the new primary did not exit in time, killing it", zap.Int("new_primary", proc.pid))
			}
		}
		p.upg.Stop()
	}()
	upErr := p.upg.Upgrade()
	close(upgraded)
	ln.Close()
	<-acceptDone
	var ho handover
	select {
	case ho = <-accepted: // always, if the new primary became ready
	default:
	}
	if ho.peer != nil {
		// Nothing from the hand-over may act on the pool once this
		// returns: close it and wait for its reader and any roll-back.
		ho.peer.close()
		ho.peer.wait()
	}
	if upErr == nil {
		p.successor = ho.proc
		return nil
	}
	ho.proc.release()
	// The new primary is gone, and its workers with it: refill whatever
	// it had taken over and did not roll back.
	if n := p.pool.Remote(); n > 0 && ctx.Err() == nil {
		p.log.Warn("reclaiming slots from the failed new primary", zap.Int("slots", n))
		p.pool.Reclaim()
	}
	return upErr
}

// takeOver is a new primary started by tableflip: it fills every slot
// while the old primary retires its workers one at a time, then becomes
// the primary that owns the listeners.
func (p *primary) takeOver(ctx context.Context, sigs <-chan os.Signal, path string, metricsLn net.Listener) error {
	addr := os.Getenv(envHandover)
	os.Unsetenv(envHandover)
	if addr == "" {
		return errors.New("started by an upgrade but no hand-over socket was given")
	}
	conn, err := net.Dial("unix", addr)
	if err != nil {
		return fmt.Errorf("cannot reach the old primary: %v", err)
	}
	pr := newPeer(conn, p.pool.HandOver, nil, nil)
	// Its reader may be retiring a worker: it ends before Run returns.
	defer func() { pr.close(); pr.wait() }()
	pr.send(message{Op: "hello", Pid: os.Getpid()})
	st, err := pr.await(ctx, "state")
	if err != nil {
		return err
	}
	p.gen = st.Generation
	start := time.Now()
	p.log.Info("taking over", zap.Int("generation", p.gen), zap.Int("old_primary", os.Getppid()), zap.Int("workers", st.Size))
	if st.Size > 0 && st.Size != p.pool.Size() {
		// The old primary's pool, scaled or not.
		if err := p.pool.Scale(ctx, st.Size, nil); err != nil {
			return fmt.Errorf("upgrade aborted: %v", err)
		}
	}

	p.pool.Adopt()
	spec := p.spec(path, p.gen)
	// A TERM or INT ends the roll; the slots taken are handed back (unless
	// the old primary is shutting down too) and the workers drained.
	queue, stopSig, err := p.underSignals(ctx, sigs, "the primary is taking over", func(ctx context.Context) error {
		progress := p.progress(p.gen)
		return p.pool.Roll(ctx, spec, pr.retire, func(step, steps int) {
			progress(step, steps)
			pr.send(message{Op: "step", Slot: step, Steps: steps})
		})
	})
	if stopSig != nil {
		// Told to stop: this primary does not take over, even if every
		// slot is already its own.
		err = fmt.Errorf("shutdown asked for (%v)", stopSig)
	}
	if err != nil {
		queue.finish(ErrShuttingDown)
		p.logAbort(p.gen, err)
		if p.pool.Remote() < p.pool.Size() {
			// Some slots are ours already: the old primary takes them
			// back one at a time before this one goes.
			rctx, cancel := context.WithTimeout(ctx, time.Duration(p.pool.Size()+1)*p.cfg.ReadyTimeout)
			if serr := pr.send(message{Op: "rollback"}); serr == nil {
				if _, rerr := pr.await(rctx, "rolledback"); rerr != nil {
					p.log.Warn("roll-back incomplete", zap.Error(rerr))
				}
			}
			cancel()
		}
		if stopSig != nil {
			return p.shutdown()
		}
		p.pool.Shutdown()
		return fmt.Errorf("upgrade aborted: %v", err)
	}
	p.owner = true
	p.current = spec
	p.setServing(p.gen)
	if err := p.upg.Ready(); err != nil {
		p.log.Error("cannot write the pid file", zap.Error(err))
	}
	notifySystemd("MAINPID=" + strconv.Itoa(os.Getpid()) + "\nREADY=1\nSTATUS=serving generation " + strconv.Itoa(p.gen))
	if metricsLn != nil {
		// The old primary answered until now and stops at the hand-over;
		// both accept on the one socket meanwhile, so no scrape or probe
		// finds it closed.
		p.web.serve(metricsLn, p.log)
	}
	p.metrics.upgraded(kindPrimary, nil, time.Since(start), p.gen)
	p.log.Info("upgrade finished", zap.Int("generation", p.gen), zap.Duration("duration", time.Since(start)))
	p.log.Info("primary ready", zap.Int("workers", p.pool.Size()), zap.Int("generation", p.gen))
	pr.close()
	// The old primary has stopped accepting on the control socket, or
	// will once it sees this primary ready: answer it from now on.
	p.ctl.serve()
	return p.loop(ctx, sigs, queue)
}

// retireAfterHandOver waits for the workers still draining, then returns
// so the old primary exits. A deploy asked for meanwhile goes to the new
// primary; every request is answered with errHandedOver.
func (p *primary) retireAfterHandOver(sigs <-chan os.Signal, pending bool) error {
	p.log.Info("handed over", zap.Int("new_primary", p.successor.pid))
	p.ctl.handedOver(p.successor.pid)
	// The new primary serves --metrics now.
	p.web.stop()
	defer p.successor.release()
	forward := func() { p.successor.signal(syscall.SIGHUP) }
	if pending {
		forward()
	}
	done := make(chan struct{})
	go func() {
		p.pool.Shutdown()
		close(done)
	}()
	for {
		select {
		case sig := <-sigs:
			switch sig {
			case syscall.SIGHUP, syscall.SIGTTIN, syscall.SIGTTOU:
				p.successor.signal(sig.(syscall.Signal))
			}
		case r := <-p.reqs:
			// The new primary watches the same files since before it
			// connected: a change seen here is seen there too. One who
			// waits for an answer is told to ask the new primary (see
			// controlServer.retry).
			if r.run == nil && r.done == nil && r.op != opWatch {
				forward()
			}
			if r.done != nil {
				r.done <- errHandedOver
			}
		case <-done:
			p.log.Info("old primary exiting")
			return nil
		}
	}
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

// selfChanged reports whether the executable tableflip would start now is
// another file than the one this primary runs.
//
// As PID 1 the primary never upgrades itself: its exit would end the pid
// namespace (the container) and every worker with it.
func (p *primary) selfChanged() bool {
	if os.Getpid() == 1 {
		return false
	}
	path, err := exec.LookPath(os.Args[0])
	if err != nil {
		return false
	}
	id, err := statID(path)
	return err == nil && id != p.selfID
}

type fileID struct{ dev, ino uint64 }

func statID(path string) (fileID, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return fileID{}, err
	}
	return fileID{uint64(st.Dev), st.Ino}, nil
}

// notifySystemd tells systemd (when it started the primary with
// NOTIFY_SOCKET) about the primary's state. Workers never see that socket.
func notifySystemd(state string) {
	daemon.SdNotify(false, state)
}

func monotonicUsec() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return ts.Nano() / 1000
}
