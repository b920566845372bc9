// Command testserver is the worker program of handoff's integration tests:
// a plain HTTP server that takes its listeners from systemd socket
// activation (LISTEN_FDS, strict LISTEN_PID check), reports READY=1 on
// NOTIFY_SOCKET and drains without losing a request on SIGTERM or SIGINT.
//
// Build-time knobs:
//
//	go build -ldflags "-X main.version=v2 -X main.mode=crash"
//
// The mode can be overridden at run time by HANDOFF_TEST_MODE and, above
// that, by --mode:
//
//	ok          serve; READY=1 once listening; drain on SIGTERM/SIGINT, exit 0
//	crash       print "testserver: crashing at start (mode=crash)", exit 3
//	noready     like ok, never sends READY=1
//	crashlater  like ok, exits 4 after --crash-after (default 300ms); with
//	            --crash-drain it drains first, as on SIGTERM (what it
//	            accepted is answered), then exits 4
//	slowready   like ok, sends READY=1 only after --ready-after (default 2s)
//	sick        like ok, but /healthz answers 500 (from the start, or
//	            after --healthz-fail-after)
//	crashslot   like crash in slot --crash-slot (HANDOFF_WORKER, default 1),
//	            like ok in every other slot
//
// Without LISTEN_FDS it listens on --listen (default 127.0.0.1:8080). If
// LISTEN_FDS is set but yields no listener (LISTEN_PID mismatch, bad fds) it
// exits 2 rather than fall back, so protocol bugs show.
//
// Every request (any path, any method) is answered 200 after its body has
// been read, with
//
//	<version> pid=<pid> worker=<HANDOFF_WORKER> gen=<HANDOFF_GENERATION>
//
// /slow?ms=N sleeps N ms first. /exit?code=N answers, then exits with code N
// 50ms later. /env answers with the environment the process started with
// (sorted, one per line; it includes LISTEN_* although activation removes
// them from the live environment), then "fds=" with the fds open when the
// process started (what it inherited, e.g. 0,1,2,3,4), "fds_now=" with
// the fds open now (includes the runtime's own, e.g. epoll) and
// "nonblocking=" with those of its inherited fds past stdio that were in
// non-blocking mode (O_NONBLOCK) when it started, before it took them.
//
// --warmup D: every request is answered 503 ("warming up …") for D after
// the start, as a server that binds at once but is not ready yet.
// --healthz-fail-after D: /healthz is answered 500 ("sick since …") once
// the process has been up D; every other path as usual.
//
// --stall-accept-file PATH: while PATH exists, the server does not call
// Accept (it looks every 10 ms), so connections wait in its socket's accept
// queue; once PATH is gone it accepts as usual.
//
// /write?stream=stdout|stderr writes the request body to that stream as it
// is (one write), then answers; with &at=exit the body is written instead
// as the process exits, after the drain.
//
// --chatter D writes "chatter <pid> <n>" lines, n = 0, 1, 2, ..., to stdout
// and to stderr every D from the start; after the stop signal it goes on
// for --chatter-drain (default 0) while draining, then writes
// "chatter <pid> last <n>" (n: the last number written) and, with no
// newline, "chatter <pid> end", to both, as the last thing before exit.
//
// /grow?mb=N allocates N MiB, touches every page and keeps it for the
// life of the process (its resident memory grows by N MiB), then answers.
// /escape starts "sleep 300" in a session of its own (out of the worker's
// process group, which the primary kills with the worker) and answers
// "escaped=<pid>".
// /orphan starts "sh -c 'sleep 0.2 & echo $!'" and answers "orphan=<pid>":
// the sleep outlives its shell and is re-parented (to PID 1 or the nearest
// subreaper) to exit there. With WATCHDOG_USEC and WATCHDOG_PID naming this
// process (go-systemd's SdWatchdogEnabled) it sends WATCHDOG=1 three times
// per period; /hang stops that (the server keeps answering), and
// /hang?trigger=1 also sends WATCHDOG=trigger.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sys/unix"

	"github.com/handoff-dev/handoff/internal/drain"
)

// Set with -ldflags "-X main.version=… -X main.mode=…".
var (
	version = "v1"
	mode    = "ok"
)

// Taken before main runs and before activation unsets LISTEN_*.
var (
	startFDs         = openFDs()
	startNonblocking = nonblocking(startFDs)
	startEnv         = os.Environ()
)

// Exit codes.
const (
	exitCrash      = 3
	exitCrashLater = 4
	exitUsage      = 2
)

// options are testserver's flags.
type options struct {
	mode         string // --mode: overrides HANDOFF_TEST_MODE and the build-time mode
	listen       string
	drainTimeout time.Duration
	crashAfter   time.Duration
	crashDrain   bool
	readyAfter   time.Duration
	crashSlot    string
	chatterEvery time.Duration
	chatterDrain time.Duration
	stallFile    string
	warmup       time.Duration
	sickAfter    time.Duration
}

func main() {
	o, err := parseFlags(os.Args[1:])
	if err != nil {
		os.Exit(exitUsage)
	}
	m := startMode(&o)

	// Catch signals before anything can make the primary send one.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)

	lns := openListeners(o)
	ctx, cancel := context.WithCancel(context.Background())
	done := serve(ctx, lns, o)
	announceReady(ctx, m, o.readyAfter)
	var chatter *chatterer
	if o.chatterEvery > 0 {
		chatter = startChatter(o.chatterEvery)
	}
	if usec, err := daemon.SdWatchdogEnabled(false); err == nil && usec > 0 {
		go pingWatchdog(usec / 3)
	}
	crashed := crashLater(m, o)

	sig := awaitStop(sigs, crashed, done, cancel, len(lns))
	drainAndExit(sig, o, cancel, done, len(lns), chatter)
}

// parseFlags parses the command line into options; the flag package has
// reported an error by the time it returns one.
func parseFlags(args []string) (options, error) {
	var o options
	fs := flag.NewFlagSet("testserver", flag.ContinueOnError)
	fs.StringVar(&o.mode, "mode", "", "ok|crash|noready|crashlater|slowready|crashslot|sick (overrides HANDOFF_TEST_MODE and the build-time mode)")
	fs.StringVar(&o.listen, "listen", "127.0.0.1:8080", "address to listen on when no LISTEN_FDS are passed")
	fs.DurationVar(&o.drainTimeout, "drain", 10*time.Second, "bound of the graceful drain on SIGTERM/SIGINT")
	fs.DurationVar(&o.crashAfter, "crash-after", 300*time.Millisecond, "mode crashlater: exit 4 after being up this long")
	fs.BoolVar(&o.crashDrain, "crash-drain", false, "mode crashlater: drain before exiting 4")
	fs.DurationVar(&o.readyAfter, "ready-after", 2*time.Second, "mode slowready: send READY=1 after this long")
	fs.StringVar(&o.crashSlot, "crash-slot", "1", "mode crashslot: the HANDOFF_WORKER value in which to crash at start")
	fs.DurationVar(&o.chatterEvery, "chatter", 0, "write numbered lines to stdout and stderr this often")
	fs.DurationVar(&o.chatterDrain, "chatter-drain", 0, "with --chatter: go on this long after the stop signal")
	fs.StringVar(&o.stallFile, "stall-accept-file", "", "while this file exists, do not accept: connections wait in the socket's queue")
	fs.DurationVar(&o.warmup, "warmup", 0, "answer every request 503 for this long after start (a server that binds at once and warms up)")
	fs.DurationVar(&o.sickAfter, "healthz-fail-after", 0, "answer /healthz 500 once up this long (other paths as usual)")
	err := fs.Parse(args)
	return o, err
}

// startMode returns the mode to run in: --mode over HANDOFF_TEST_MODE over
// the build-time mode. The modes decided at start end here: crash (and
// crashslot in its slot) exits 3, an unknown mode exits 2; crashslot in
// another slot runs as ok, and sick makes /healthz fail from the start
// unless --healthz-fail-after says when.
func startMode(o *options) string {
	m := mode
	if env := os.Getenv("HANDOFF_TEST_MODE"); env != "" {
		m = env
	}
	if o.mode != "" {
		m = o.mode
	}
	if m == "crashslot" {
		if w := os.Getenv("HANDOFF_WORKER"); w == o.crashSlot {
			fmt.Fprintf(os.Stderr, "testserver: crashing at start (mode=crashslot, worker=%s)\n", w)
			os.Exit(exitCrash)
		}
		m = "ok"
	}
	switch m {
	case "ok", "noready", "crashlater", "slowready":
	case "sick":
		if o.sickAfter <= 0 {
			o.sickAfter = time.Nanosecond
		}
	case "crash":
		fmt.Fprintf(os.Stderr, "testserver: crashing at start (mode=%s)\n", m)
		os.Exit(exitCrash)
	default:
		fmt.Fprintf(os.Stderr, "testserver: unknown mode %q\n", m)
		os.Exit(exitUsage)
	}
	return m
}

// openListeners takes the listeners (exit 2 without one), wraps them for
// --stall-accept-file and says where it listens.
func openListeners(o options) []net.Listener {
	lns, err := listeners(o.listen)
	if err != nil {
		fmt.Fprintf(os.Stderr, "testserver: %v\n", err)
		os.Exit(exitUsage)
	}
	if o.stallFile != "" {
		for i, ln := range lns {
			lns[i] = &stallListener{Listener: ln, path: o.stallFile, closed: make(chan struct{})}
		}
	}
	var addrs []string
	for _, ln := range lns {
		addrs = append(addrs, ln.Addr().String())
	}
	fmt.Fprintf(os.Stderr, "testserver %s pid=%d worker=%s listening on %s\n",
		version, os.Getpid(), os.Getenv("HANDOFF_WORKER"), strings.Join(addrs, ","))
	return lns
}

// serve serves every listener until ctx ends, then drains it within
// --drain; each one's end comes on the channel returned.
func serve(ctx context.Context, lns []net.Listener, o options) chan error {
	reply := fmt.Sprintf("%s pid=%d worker=%s gen=%s\n", version, os.Getpid(), os.Getenv("HANDOFF_WORKER"), os.Getenv("HANDOFF_GENERATION"))
	h := handler(reply)
	if o.warmup > 0 || o.sickAfter > 0 {
		h = phases(h, time.Now(), o.warmup, o.sickAfter)
	}
	done := make(chan error, len(lns))
	for _, ln := range lns {
		srv := &http.Server{Handler: h, ReadHeaderTimeout: time.Minute}
		go func() { done <- drain.Serve(ctx, srv, ln, o.drainTimeout) }()
	}
	return done
}

// announceReady sends READY=1 as the mode says: at once, after
// --ready-after (slowready, unless stopping by then) or never (noready).
func announceReady(ctx context.Context, m string, readyAfter time.Duration) {
	switch m {
	case "ok", "crashlater", "sick":
		notifyReady()
	case "slowready":
		go func() {
			time.Sleep(readyAfter)
			if ctx.Err() == nil {
				notifyReady()
			}
		}()
	}
}

// crashLater, in mode crashlater, exits 4 after --crash-after; with
// --crash-drain it closes the channel returned instead, for the drain.
func crashLater(m string, o options) chan struct{} {
	crashed := make(chan struct{})
	if m != "crashlater" {
		return crashed
	}
	go func() {
		time.Sleep(o.crashAfter)
		fmt.Fprintf(os.Stderr, "testserver: crashing after %v (mode=crashlater)\n", o.crashAfter)
		if !o.crashDrain {
			os.Exit(exitCrashLater)
		}
		close(crashed)
	}()
	return crashed
}

// awaitStop waits for the stop signal and returns it. A crash with
// --crash-drain drains the n servers and exits 4; a server that fails on
// its own exits 1.
func awaitStop(sigs chan os.Signal, crashed chan struct{}, done chan error, cancel context.CancelFunc, n int) os.Signal {
	var sig os.Signal
	select {
	case sig = <-sigs:
	case <-crashed:
		cancel()
		for range n {
			<-done
		}
		os.Exit(exitCrashLater)
	case err := <-done:
		// A listener failed on its own.
		fmt.Fprintf(os.Stderr, "testserver: serve: %v\n", err)
		cancel()
		os.Exit(1)
	}
	return sig
}

// drainAndExit drains the n servers on the stop signal, ends the chatter
// (after --chatter-drain), writes what /write?at=exit left and exits 0.
func drainAndExit(sig os.Signal, o options, cancel context.CancelFunc, done chan error, n int, chatter *chatterer) {
	begin := time.Now()
	fmt.Fprintf(os.Stderr, "testserver %s pid=%d: %v, draining (bound %v)\n", version, os.Getpid(), sig, o.drainTimeout)
	cancel() // further signals stay caught and are ignored: the drain is bounded
	var errs []error
	for range n {
		if err := <-done; err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		fmt.Fprintf(os.Stderr, "testserver %s pid=%d: drain: %v\n", version, os.Getpid(), err)
	}
	fmt.Fprintf(os.Stderr, "testserver %s pid=%d: drained in %v, exiting 0\n", version, os.Getpid(), time.Since(begin).Round(time.Millisecond))
	if chatter != nil {
		time.Sleep(time.Until(begin.Add(o.chatterDrain)))
		chatter.stop()
	}
	atExit.write()
	os.Exit(0)
}

// listeners returns the socket-activation listeners, or one on addr when
// none were passed.
func listeners(addr string) ([]net.Listener, error) {
	passed := os.Getenv("LISTEN_FDS")
	// activation.Files checks LISTEN_PID strictly, marks the fds
	// close-on-exec and unsets LISTEN_*; the *os.File names come from
	// LISTEN_FDNAMES. activation.Listeners does the same but drops the names.
	var lns []net.Listener
	for _, f := range activation.Files(true) {
		ln, err := net.FileListener(f)
		f.Close() // ln holds its own dup
		if err != nil {
			// As activation.Listeners does, skip what is not a listener.
			fmt.Fprintf(os.Stderr, "testserver: skipping %s: %v\n", f.Name(), err)
			continue
		}
		lns = append(lns, ln)
	}
	if len(lns) > 0 {
		return lns, nil
	}
	if passed != "" && passed != "0" {
		return nil, fmt.Errorf("LISTEN_FDS=%s but no listener taken (LISTEN_PID=%q, pid %d)", passed, os.Getenv("LISTEN_PID"), os.Getpid())
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return []net.Listener{ln}, nil
}

// stallListener does not call Accept while the file at path exists.
type stallListener struct {
	net.Listener
	path      string
	closeOnce sync.Once
	closed    chan struct{}
}

func (l *stallListener) Accept() (net.Conn, error) {
	for {
		if _, err := os.Stat(l.path); errors.Is(err, os.ErrNotExist) {
			return l.Listener.Accept()
		}
		t := time.NewTimer(10 * time.Millisecond)
		select {
		case <-t.C:
		case <-l.closed:
			t.Stop()
			return nil, net.ErrClosed
		}
	}
}

func (l *stallListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

func notifyReady() {
	if os.Getenv("NOTIFY_SOCKET") == "" {
		return
	}
	if ok, err := daemon.SdNotify(false, daemon.SdNotifyReady); !ok || err != nil {
		fmt.Fprintf(os.Stderr, "testserver: READY=1 not sent: sent=%v err=%v\n", ok, err)
	}
}

// phases answers every request 503 until warmup has passed since start,
// and /healthz 500 once sickAfter (if positive) has.
func phases(h http.Handler, start time.Time, warmup, sickAfter time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		up := time.Since(start)
		switch {
		case up < warmup:
			io.Copy(io.Discard, r.Body)
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "warming up (%s of %s)\n", up.Round(time.Millisecond), warmup)
		case sickAfter > 0 && up >= sickAfter && r.URL.Path == "/healthz":
			w.WriteHeader(http.StatusInternalServerError)
			fmt.Fprintf(w, "sick since %s\n", (up - sickAfter).Round(time.Millisecond))
		default:
			h.ServeHTTP(w, r)
		}
	})
}

// handler routes the requests; every path but those below answers reply.
func handler(reply string) http.Handler {
	rt := routes{reply: reply}
	mux := http.NewServeMux()
	mux.HandleFunc("/", rt.root)
	mux.HandleFunc("/slow", rt.slow)
	mux.HandleFunc("/env", rt.env)
	mux.HandleFunc("/write", rt.write)
	mux.HandleFunc("/grow", rt.grow)
	mux.HandleFunc("/orphan", rt.orphan)
	mux.HandleFunc("/escape", rt.escape)
	mux.HandleFunc("/hang", rt.hang)
	mux.HandleFunc("/exit", rt.exit)
	return mux
}

// routes are the HTTP routes, one method each; reply is the answer of
// those that answer as / does.
type routes struct {
	reply string
}

// root answers reply, after the body.
func (rt routes) root(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body)
	io.WriteString(w, rt.reply)
}

// slow answers reply after ?ms=N milliseconds, or nothing if the request
// ends first.
func (rt routes) slow(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body)
	ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
	t := time.NewTimer(time.Duration(ms) * time.Millisecond)
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.Context().Done():
		return
	}
	io.WriteString(w, rt.reply)
}

// env answers the environment at start, sorted, and the fds: open at
// start, open now, and non-blocking at start.
func (rt routes) env(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body)
	env := slices.Clone(startEnv)
	sort.Strings(env)
	var b strings.Builder
	for _, kv := range env {
		b.WriteString(kv + "\n")
	}
	fmt.Fprintf(&b, "fds=%s\nfds_now=%s\nnonblocking=%s\n", joinInts(startFDs), joinInts(openFDs()), joinInts(startNonblocking))
	io.WriteString(w, b.String())
}

// write writes the body to ?stream=stdout|stderr, now or (&at=exit) as
// the process exits, and answers reply.
func (rt routes) write(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, "write: "+err.Error(), http.StatusBadRequest)
		return
	}
	var out *os.File
	switch r.URL.Query().Get("stream") {
	case "stdout":
		out = os.Stdout
	case "stderr":
		out = os.Stderr
	default:
		http.Error(w, "write: want ?stream=stdout or stderr", http.StatusBadRequest)
		return
	}
	if r.URL.Query().Get("at") == "exit" {
		atExit.add(out, body)
	} else if _, err := out.Write(body); err != nil {
		http.Error(w, "write: "+err.Error(), http.StatusInternalServerError)
		return
	}
	io.WriteString(w, rt.reply)
}

// grow allocates ?mb=N MiB, touches every page, keeps it and answers
// reply.
func (rt routes) grow(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body)
	mb, err := strconv.Atoi(r.URL.Query().Get("mb"))
	if err != nil || mb <= 0 || mb > 4096 {
		http.Error(w, "grow: want ?mb=N (1-4096)", http.StatusBadRequest)
		return
	}
	b := make([]byte, mb<<20)
	for i := 0; i < len(b); i += 4096 {
		b[i] = 1
	}
	grown.Lock()
	grown.bufs = append(grown.bufs, b)
	grown.Unlock()
	io.WriteString(w, rt.reply)
}

// orphan leaves a short sleep whose shell has exited and answers its pid.
func (rt routes) orphan(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body)
	out, err := exec.Command("/bin/sh", "-c", "sleep 0.2 & echo $!").Output()
	if err != nil {
		http.Error(w, "orphan: "+err.Error(), http.StatusInternalServerError)
		return
	}
	fmt.Fprintf(w, "orphan=%s\n", strings.TrimSpace(string(out)))
}

// escape starts a long sleep in a session of its own and answers its pid.
func (rt routes) escape(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body)
	cmd := exec.Command("sleep", "300")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		http.Error(w, "escape: "+err.Error(), http.StatusInternalServerError)
		return
	}
	go cmd.Wait()
	fmt.Fprintf(w, "escaped=%d\n", cmd.Process.Pid)
}

// hang stops the watchdog pings (?trigger=1: and sends WATCHDOG=trigger)
// and answers reply.
func (rt routes) hang(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body)
	watchdogHung.Store(true)
	if r.URL.Query().Get("trigger") == "1" {
		daemon.SdNotify(false, "WATCHDOG=trigger")
	}
	io.WriteString(w, rt.reply)
}

// exit answers reply on a closing connection, then exits with ?code=N
// 50ms later.
func (rt routes) exit(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body)
	code, err := strconv.Atoi(r.URL.Query().Get("code"))
	if err != nil {
		http.Error(w, "exit: want ?code=N", http.StatusBadRequest)
		return
	}
	w.Header().Set("Connection", "close")
	io.WriteString(w, rt.reply)
	http.NewResponseController(w).Flush()
	fmt.Fprintf(os.Stderr, "testserver %s pid=%d: /exit, exiting %d\n", version, os.Getpid(), code)
	go func() {
		time.Sleep(50 * time.Millisecond)
		os.Exit(code)
	}()
}

// atExit holds what /write?at=exit asked for.
var atExit exitWrites

type exitWrites struct {
	sync.Mutex
	writes []exitWrite
}

type exitWrite struct {
	f *os.File
	b []byte
}

func (e *exitWrites) add(f *os.File, b []byte) {
	e.Lock()
	e.writes = append(e.writes, exitWrite{f, b})
	e.Unlock()
}

func (e *exitWrites) write() {
	e.Lock()
	defer e.Unlock()
	for _, w := range e.writes {
		w.f.Write(w.b)
	}
}

// chatterer writes numbered lines to stdout and stderr (--chatter).
type chatterer struct {
	done, stopped chan struct{}
}

func startChatter(every time.Duration) *chatterer {
	c := &chatterer{done: make(chan struct{}), stopped: make(chan struct{})}
	pid := os.Getpid()
	go func() {
		defer close(c.stopped)
		t := time.NewTicker(every)
		defer t.Stop()
		n := 0
		for {
			fmt.Fprintf(os.Stdout, "chatter %d %d\n", pid, n)
			fmt.Fprintf(os.Stderr, "chatter %d %d\n", pid, n)
			select {
			case <-t.C:
				n++
			case <-c.done:
				for _, f := range []*os.File{os.Stdout, os.Stderr} {
					fmt.Fprintf(f, "chatter %d last %d\nchatter %d end", pid, n, pid)
				}
				return
			}
		}
	}()
	return c
}

// stop ends the chatter with its last lines.
func (c *chatterer) stop() {
	close(c.done)
	<-c.stopped
}

// grown keeps what /grow allocated.
var grown struct {
	sync.Mutex
	bufs [][]byte
}

// watchdogHung is set by /hang: no more WATCHDOG=1.
var watchdogHung atomic.Bool

func pingWatchdog(every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for range t.C {
		if !watchdogHung.Load() {
			daemon.SdNotify(false, daemon.SdNotifyWatchdog)
		}
	}
}

// openFDs lists the fds open in this process, without the one used to read
// /proc/self/fd.
func openFDs() []int {
	d, err := os.Open("/proc/self/fd")
	if err != nil {
		return nil
	}
	defer d.Close()
	self := int(d.Fd())
	names, _ := d.Readdirnames(-1)
	var fds []int
	for _, n := range names {
		if fd, err := strconv.Atoi(n); err == nil && fd != self {
			fds = append(fds, fd)
		}
	}
	sort.Ints(fds)
	return fds
}

// nonblocking returns those of fds past stdio that are in non-blocking
// mode.
func nonblocking(fds []int) []int {
	var out []int
	for _, fd := range fds {
		if fd <= 2 {
			continue
		}
		if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); err == nil && fl&unix.O_NONBLOCK != 0 {
			out = append(out, fd)
		}
	}
	return out
}

func joinInts(xs []int) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, ",")
}
