package runtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/handoff-dev/handoff/internal/channel"
	"github.com/handoff-dev/handoff/internal/drain"
	"github.com/handoff-dev/handoff/internal/shim"
	"github.com/handoff-dev/handoff/internal/unixsock"
	"github.com/handoff-dev/handoff/workerpool"
)

// A program that imports runtime can be its own primary: the primary
// starts workers through its own executable acting as the exec step
// (internal/shim), marked by HANDOFF_SHIM_EXEC. That step must run before
// any of the program's code, so it runs here, in package initialisation;
// in any other process this returns at once.
func init() { shim.Main() }

// EnvStandalone, set to 1, makes Main serve in one process with no
// primary (App.Standalone does the same).
const EnvStandalone = "HANDOFF_STANDALONE"

const envStandalone = EnvStandalone

// App is a program in library mode: the same binary is the primary and
// its workers, as with Node's cluster module.
type App struct {
	// Config is the primary's configuration, with the same meanings and
	// defaults as Run's (and the CLI flags), except that readiness
	// defaults to ReadyNotify (the zero value): a worker is ready when it
	// calls Worker.Ready, which Worker.Serve does. Command must be empty:
	// the workers run this program's own executable, with its arguments. A
	// rebuilt executable at that path is what a SIGHUP deploys: the
	// primary upgrades itself, then rolls the workers. IPC is implied.
	Config Config
	// Worker serves, in each worker process (and in a standalone one). ctx
	// is cancelled when the worker must drain (the stop signal, TERM or
	// INT); Worker should then finish in-flight work and return within
	// Config.DrainTimeout. Worker.Serve does all of that for an
	// *http.Server. Required.
	Worker func(ctx context.Context, w *Worker) error
	// Primary, if set, runs in the primary (in its own goroutine) while
	// it serves, e.g. to push configuration to the workers through hub. ctx
	// ends when the primary stops or hands over to a new one; Primary
	// must return then. After a self-upgrade, the new primary's Primary
	// starts once the old one's has returned: the two never run side by
	// side. A panic in it is recovered and logged ("callback panicked",
	// with its stack); the primary serves on without it.
	Primary func(ctx context.Context, hub *Hub)
	// OnMessage, if set, receives in the primary what workers send, serially
	// per worker. A panic in it is recovered and logged ("callback
	// panicked"); the message is dropped and the next ones are delivered.
	OnMessage func(m Message)
	// Standalone serves in this process, with no primary and no other
	// worker, for debugging; so does HANDOFF_STANDALONE=1.
	Standalone bool
}

// Main runs app. Call it first in main (before other work: signals that
// arrive before it are not caught yet). Run by a user, it is the primary:
// it binds the listeners, starts the workers by running this executable
// again, deploys on SIGHUP and shuts down gracefully on TERM or INT, as
// `handoff run` does. Started by a primary, it is the worker side: it calls
// app.Worker. It returns after a graceful shutdown (nil) or with an error
// that says what is wrong.
func Main(ctx context.Context, app App) error {
	if app.Worker == nil {
		return errors.New("runtime.App: Worker is required")
	}
	if len(app.Config.Command) > 0 {
		return errors.New("runtime.App: Config.Command must be empty: the workers run this program's own executable")
	}
	switch {
	case isWorker():
		return runWorker(ctx, app)
	case app.Standalone || os.Getenv(envStandalone) == "1":
		return runStandalone(ctx, app, nil)
	case errNoPrimary != nil:
		// No primary here (not Linux): the same binary serves as it
		// would standalone, and says so.
		return runStandalone(ctx, app, errNoPrimary)
	}
	cfg := app.Config
	// Resolved as tableflip resolves it for an upgrade: os.Args[0], in
	// PATH when it has no slash.
	cfg.Command = append([]string{os.Args[0]}, os.Args[1:]...)
	cfg.Hub = NewHub(app.OnMessage)
	if cfg.Signals == nil {
		ch := CatchSignals()
		defer signal.Stop(ch)
		cfg.Signals = ch
	}
	// Run starts app.Primary through the hub once it owns the listeners,
	// and ends its context at a hand-over.
	cfg.Hub.app, cfg.Hub.appCtx = app.Primary, ctx
	err := Run(ctx, cfg)
	cfg.Hub.stopApp()
	return err
}

// withPrimary runs fn with app.Primary beside it, ended with fn: a
// standalone program's primary side.
func withPrimary(ctx context.Context, log *zap.Logger, primary func(context.Context, *Hub), hub *Hub, fn func() error) error {
	if primary == nil {
		return fn()
	}
	pctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		protect(log, "Primary", func() { primary(pctx, hub) })
	}()
	err := fn()
	cancel()
	<-done
	return err
}

// isWorker reports whether a primary started this process as a worker.
func isWorker() bool {
	return os.Getenv("HANDOFF_WORKER") != "" && os.Getenv("LISTEN_FDS") != ""
}

// Worker is the worker side of a program in library mode.
type Worker struct {
	slot, gen    int
	standalone   bool
	listeners    []net.Listener
	names        []string
	ctx          context.Context
	drainTimeout time.Duration
	log          *zap.Logger
	ch           *channel.Conn
	readyOnce    sync.Once
	ready        func()

	mu      sync.Mutex
	handler func(json.RawMessage)
	pending []json.RawMessage
}

// maxPending bounds the messages kept for a handler not registered yet.
const maxPending = 1024

// Slot is the worker's slot, 0..Workers-1 (0 when standalone).
func (w *Worker) Slot() int { return w.slot }

// Generation is the deploy the worker belongs to: 1 for the first
// workers (0 when standalone).
func (w *Worker) Generation() int { return w.gen }

// Standalone reports whether the program serves alone, with no primary.
func (w *Worker) Standalone() bool { return w.standalone }

// Listeners returns the listeners, in Config.Listeners order.
func (w *Worker) Listeners() []net.Listener { return w.listeners }

// Listener returns the listener named name (Listener.Name, "listener0",
// "listener1", ... by default), or nil.
func (w *Worker) Listener(name string) net.Listener {
	for i, n := range w.names {
		if n == name {
			return w.listeners[i]
		}
	}
	return nil
}

// Context is cancelled when the worker must drain.
func (w *Worker) Context() context.Context { return w.ctx }

// Ready tells the primary that this worker serves: the primary retires
// the worker it replaces only then. Serve calls it; call it yourself when
// serving something else. Calls after the first do nothing.
func (w *Worker) Ready() { w.readyOnce.Do(w.ready) }

// Notify sends an sd_notify state to the primary, e.g. "STATUS=warming
// caches" (logged) or "WATCHDOG=1" (a keep-alive, once Config.Watchdog is
// set: a worker that has sent one must send the next within that time).
// It does nothing when standalone.
func (w *Worker) Notify(state string) error {
	if w.standalone {
		return nil
	}
	_, err := daemon.SdNotify(false, state)
	return err
}

// ErrNoChannel is returned by Worker.Send in a worker with no message
// channel: one run by `handoff run` without --ipc.
var ErrNoChannel = errors.New("no message channel to the primary (under handoff run, add --ipc)")

// Send queues v, encoded as JSON, for the primary (App.OnMessage). It
// never blocks: it fails when the queue is full (the primary is not
// reading), the channel has closed, or there is none.
func (w *Worker) Send(v any) error {
	if w.ch == nil {
		return ErrNoChannel
	}
	return w.ch.Send(v)
}

// OnMessage sets the handler of what the primary sends this worker; it is
// called serially, in order. Messages that arrived before are handed to
// it first.
func (w *Worker) OnMessage(fn func(data json.RawMessage)) {
	w.mu.Lock()
	w.handler = fn
	pending := w.pending
	w.pending = nil
	w.mu.Unlock()
	for _, m := range pending {
		fn(m)
	}
}

func (w *Worker) receive(line []byte) {
	w.mu.Lock()
	h := w.handler
	if h == nil {
		if len(w.pending) < maxPending {
			w.pending = append(w.pending, line)
		} else {
			w.log.Warn("message from the primary dropped: no handler set (Worker.OnMessage)")
		}
	}
	w.mu.Unlock()
	if h != nil {
		h(line)
	}
}

// Serve serves srv on ln (nil: the first listener), says the worker is
// ready, and when the worker must drain, drains without losing a request:
// every further response carries "Connection: close", the listener is
// closed (the other workers keep accepting on the shared socket), Serve
// waits until srv.Serve has returned, gives the connections a bounded time
// to end, then shuts srv down, all within the drain timeout. It returns
// nil after a clean drain. Serve takes srv over: do not call Shutdown or
// Close on it.
func (w *Worker) Serve(srv *http.Server, ln net.Listener) error {
	if ln == nil {
		if len(w.listeners) == 0 {
			return errors.New("no listener to serve")
		}
		ln = w.listeners[0]
	}
	w.Ready()
	return drain.Serve(w.ctx, srv, ln, w.drainTimeout)
}

// serveDrainTimeout leaves the drain some margin before the primary's
// SIGKILL at DrainTimeout.
func serveDrainTimeout(d time.Duration) time.Duration {
	margin := d / 10
	if margin > time.Second {
		margin = time.Second
	}
	return d - margin
}

func newWorker(ctx context.Context, cfg *Config, slot, gen int) *Worker {
	return &Worker{slot: slot, gen: gen, ctx: ctx, drainTimeout: serveDrainTimeout(cfg.DrainTimeout),
		log: cfg.Logger.With(zap.Int("slot", slot), zap.Int("pid", os.Getpid()), zap.Int("generation", gen))}
}

// drainContext is ctx, cancelled too at the first of sigs: the worker
// must drain.
func drainContext(ctx context.Context, sigs ...os.Signal) (context.Context, func()) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, sigs...)
	wctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-ch:
			cancel()
		case <-wctx.Done():
		}
	}()
	return wctx, func() { signal.Stop(ch); cancel() }
}

// runWorker is the worker side: listeners from LISTEN_FDS, the message
// channel from HANDOFF_CHANNEL_FD, drain on the stop signal.
func runWorker(ctx context.Context, app App) error {
	cfg := app.Config
	cfg.setDefaults()
	wctx, stop := drainContext(ctx, cfg.StopSignal, syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	slot, _ := strconv.Atoi(os.Getenv("HANDOFF_WORKER"))
	gen, _ := strconv.Atoi(os.Getenv("HANDOFF_GENERATION"))
	w := newWorker(wctx, &cfg, slot, gen)
	chanFD := os.Getenv(shim.EnvChannelFD)
	// The channel's fd is this process's alone: programs it starts must
	// not believe they have one.
	for _, k := range shim.ChannelEnv {
		os.Unsetenv(k)
	}
	files := activation.Files(true)
	if len(files) == 0 {
		return errors.New("started as a worker (HANDOFF_WORKER) but LISTEN_FDS yields no listener: LISTEN_PID is not this process")
	}
	for _, f := range files {
		ln, err := net.FileListener(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("listener %s: %v", f.Name(), err)
		}
		w.listeners = append(w.listeners, ln)
		w.names = append(w.names, f.Name())
	}
	if chanFD != "" {
		fd, err := strconv.Atoi(chanFD)
		if err != nil {
			return fmt.Errorf("%s=%q: not an fd", shim.EnvChannelFD, chanFD)
		}
		if w.ch, err = channel.FromFD(fd, channel.Options{OnMessage: w.receive}); err != nil {
			return err
		}
		defer w.ch.Close()
	}
	w.ready = func() {
		if _, err := daemon.SdNotify(false, daemon.SdNotifyReady); err != nil || os.Getenv("NOTIFY_SOCKET") == "" {
			// No notify socket (or it failed): say it on the channel.
			if w.ch != nil {
				w.ch.Send(workerpool.Control{Handoff: "ready"})
			}
		}
	}
	return app.Worker(wctx, w)
}

// runStandalone serves in this process: the listeners bound here, one
// worker, and the primary's message side looped back in-process. why, if
// not nil, is why there is no primary when one was asked for: it is logged
// as a warning.
func runStandalone(ctx context.Context, app App, why error) error {
	cfg := app.Config
	cfg.setDefaults()
	if why != nil {
		cfg.Logger.Warn("serving standalone", zap.String("reason", why.Error()+": one process, no workers, no deploys"))
	}
	if len(cfg.Listeners) == 0 {
		return errors.New("no listener given: add one to Config.Listeners")
	}
	wctx, stop := drainContext(ctx, cfg.StopSignal, syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	w := newWorker(wctx, &cfg, 0, 0)
	w.standalone = true
	w.ready = func() {}
	defer func() {
		for _, ln := range w.listeners {
			ln.Close()
		}
	}()
	if err := w.listenStandalone(&cfg); err != nil {
		return err
	}

	// The message channel, looped back: the same code on both ends as
	// with a primary.
	fd, err := w.loopBackChannel()
	if err != nil {
		return err
	}
	defer w.ch.Close()
	hub := NewHub(app.OnMessage)
	hub.log = cfg.Logger
	primaryEnd, err := hub.standaloneEnd(fd)
	if err != nil {
		return err
	}
	defer primaryEnd.Close()
	hub.local = primaryEnd.SendRaw
	return withPrimary(wctx, cfg.Logger, app.Primary, hub, func() error { return app.Worker(wctx, w) })
}

// listenStandalone binds cfg's listeners, in order, as w's (a stale unix
// socket file removed first).
func (w *Worker) listenStandalone(cfg *Config) error {
	for _, l := range cfg.Listeners {
		if l.Network == "unix" {
			if err := unixsock.RemoveStale(l.Address); err != nil {
				return err
			}
		}
		ln, err := net.Listen(l.Network, l.Address)
		if err != nil {
			return listenError(l, err)
		}
		cfg.Logger.Info("listening", zap.String("name", l.Name), zap.String("network", l.Network),
			zap.String("addr", ln.Addr().String()), zap.Bool("standalone", true))
		w.listeners = append(w.listeners, ln)
		w.names = append(w.names, l.Name)
	}
	return nil
}

// loopBackChannel opens w's message channel on one end of a socket pair
// and returns the other end's fd: the primary's end, in this process.
func (w *Worker) loopBackChannel() (int, error) {
	fds, err := socketpair()
	if err != nil {
		return -1, fmt.Errorf("message channel: %v", err)
	}
	if w.ch, err = channel.FromFD(fds[1], channel.Options{OnMessage: w.receive}); err != nil {
		unix.Close(fds[0])
		return -1, err
	}
	return fds[0], nil
}

// standaloneEnd opens the primary's end of a standalone worker's message
// channel on fd: the worker's messages go to h, its control lines nowhere,
// and replies go back on the same end.
func (h *Hub) standaloneEnd(fd int) (*channel.Conn, error) {
	var end *channel.Conn
	end, err := channel.FromFD(fd, channel.Options{OnMessage: func(line []byte) {
		if _, ok := workerpool.ParseControl(line); ok {
			return
		}
		h.deliver(workerpool.Message{Slot: 0, Pid: os.Getpid(), Data: line, Reply: end.SendRaw})
	}})
	return end, err
}
