package workerpool

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/handoff-dev/handoff/internal/channel"
	"github.com/handoff-dev/handoff/internal/sdnotify"
	"github.com/handoff-dev/handoff/internal/shim"
)

// Process is a started worker as the pool sees it. The pool only ever talks
// to workers through this interface, so tests can drive fakes step by step.
type Process interface {
	Pid() int
	// Ready is closed once the worker is ready to serve.
	Ready() <-chan struct{}
	// Done is closed once the worker has exited and been reaped.
	Done() <-chan struct{}
	// Exit describes how the worker ended; valid once Done is closed.
	Exit() Exit
	// Signal sends sig to the worker while it is alive.
	Signal(sig syscall.Signal) error
	// Kill sends SIGKILL to the worker and its process group.
	Kill()
}

// Exit is how a worker ended.
type Exit struct {
	// Status reads like os.ProcessState: "exit status 3", "signal: killed".
	Status string
	// Code is the exit code, or -1 when a signal ended the worker.
	Code int
	// StderrTail holds the last lines the worker wrote to stderr.
	StderrTail string
	// Uptime is the time from start to exit.
	Uptime time.Duration
}

// Spec is what a worker runs: one deploy's resolved command.
type Spec struct {
	// Path is the resolved executable (absolute, symlinks followed).
	Path string
	// Args is the argv, Args[0] included.
	Args []string
	// Env is the environment before the worker contract's variables are
	// added; it must not hold LISTEN_*, NOTIFY_SOCKET or HANDOFF_*.
	Env []string
	// Dir is the working directory; empty means the primary's.
	Dir string
	// Generation counts deploys; it reaches the worker as HANDOFF_GENERATION.
	Generation int
}

// Launcher starts a worker for a slot.
type Launcher interface {
	Launch(slot int, spec *Spec) (Process, error)
}

// ReadyMode says how a worker's readiness is learnt.
type ReadyMode int

const (
	// ReadyNotify waits for READY=1 on the worker's NOTIFY_SOCKET.
	ReadyNotify ReadyMode = iota
	// ReadyDelay counts a worker ready once it has been alive for the
	// delay, or at READY=1 if that comes first.
	ReadyDelay
)

// stderrTailBytes bounds the stderr kept for exit reports.
const stderrTailBytes = 2048

// OSLauncher starts workers as real processes through the shim
// (internal/shim): the listeners become fds 3, 4, … with LISTEN_FDS,
// LISTEN_FDNAMES and LISTEN_PID, and NOTIFY_SOCKET names a datagram socket
// private to the worker.
type OSLauncher struct {
	// Listeners are raw fds of the listening sockets. They are passed with
	// syscall.ForkExec and never wrapped in an *os.File, whose Fd method
	// would switch the shared socket to blocking mode for every worker
	// (golang/go#43894).
	Listeners []int
	// Names go into LISTEN_FDNAMES, one per listener.
	Names []string
	// Ready and ReadyDelay select how readiness is learnt.
	Ready      ReadyMode
	ReadyDelay time.Duration
	// NotifyDir holds the workers' notify sockets; it should be a private
	// directory of mode 0700.
	NotifyDir string
	// Stdout is inherited by every worker as is; nil means os.Stdout.
	Stdout *os.File
	// Stderr receives the workers' stderr, whole lines at a time; nil means
	// os.Stderr.
	Stderr io.Writer
	// Output, if set, forwards the workers' stdout and stderr instead, as
	// its Mode says (labelled lines, JSON events, or raw); Stdout is then
	// inherited in raw mode only, and Stderr is not used.
	Output *Output
	// Self is the shim executable; empty means /proc/self/exe.
	Self string
	// Logger gets STATUS= and STOPPING=1 from workers.
	Logger *zap.Logger
	// Channel gives every worker a message channel (internal/channel): a
	// unix stream socket whose worker end is the fd right after the
	// listeners, named in HANDOFF_CHANNEL_FD and, for Node.js's built-in
	// IPC, NODE_CHANNEL_FD (with NODE_CHANNEL_SERIALIZATION_MODE=json).
	// Control messages on it ({"handoff":"ready"}, see Control) count as
	// sd_notify's; every other value goes to OnMessage.
	Channel bool
	// OnMessage receives, serially per worker, each value a worker sends
	// on its channel that is not a control message. It should not block
	// for long: that worker's further messages wait for it.
	OnMessage func(Message)
	// Watchdog, if positive, reaches every worker as WATCHDOG_USEC (and
	// WATCHDOG_PID, set by the shim): a worker that sends WATCHDOG=1 is
	// expected to send it again within that time. The primary decides what
	// to do about one that does not (see WatchdogReporter).
	Watchdog time.Duration
	// Credential, if not nil, is the user and groups the workers run as;
	// each worker's notify socket is then owned by that user, and
	// NotifyDir must be searchable by it.
	Credential *syscall.Credential

	seq      atomic.Uint64
	stderrMu sync.Mutex
}

var errNotStarted = errors.New("worker did not start")

// Launch starts one worker and returns once it has been forked.
func (l *OSLauncher) Launch(slot int, spec *Spec) (Process, error) {
	log := l.Logger
	if log == nil {
		log = zap.NewNop()
	}
	self := l.Self
	if self == "" {
		self = "/proc/self/exe"
	}
	stdout := l.Stdout
	if stdout == nil {
		stdout = os.Stdout
	}

	wout, err := l.Output.stdoutPipe()
	if err != nil {
		return nil, err
	}
	defer wout.close()

	sockPath := filepath.Join(l.NotifyDir, fmt.Sprintf("w%d-%d.sock", slot, l.seq.Add(1)))
	sock, err := sdnotify.Listen(sockPath)
	if err != nil {
		return nil, err
	}
	if c := l.Credential; c != nil {
		if err := os.Chown(sockPath, int(c.Uid), int(c.Gid)); err != nil {
			sock.Close()
			return nil, fmt.Errorf("notify socket: %w", err)
		}
	}
	devnull, err := unix.Open(os.DevNull, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		sock.Close()
		return nil, err
	}
	defer unix.Close(devnull)
	var pipe [2]int
	if err := unix.Pipe2(pipe[:], unix.O_CLOEXEC); err != nil {
		sock.Close()
		return nil, err
	}
	chanFD := -1 // the primary's end of the message channel
	var workerEnd int
	if l.Channel {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			sock.Close()
			unix.Close(pipe[0])
			unix.Close(pipe[1])
			return nil, fmt.Errorf("message channel: %v", err)
		}
		chanFD, workerEnd = fds[0], fds[1]
	}

	env := make([]string, 0, len(spec.Env)+6)
	env = append(env, spec.Env...)
	env = append(env,
		"LISTEN_FDS="+strconv.Itoa(len(l.Listeners)),
		"LISTEN_FDNAMES="+strings.Join(l.Names, ":"),
		"NOTIFY_SOCKET="+sockPath,
		"HANDOFF_WORKER="+strconv.Itoa(slot),
		"HANDOFF_GENERATION="+strconv.Itoa(spec.Generation),
		shim.EnvMarker+"="+spec.Path,
	)
	if l.Watchdog > 0 {
		env = append(env, "WATCHDOG_USEC="+strconv.FormatInt(l.Watchdog.Microseconds(), 10))
	}
	files := []uintptr{uintptr(devnull), wout.fd(stdout), uintptr(pipe[1])}
	for _, fd := range l.Listeners {
		files = append(files, uintptr(fd))
	}
	if chanFD >= 0 {
		n := strconv.Itoa(len(files))
		files = append(files, uintptr(workerEnd))
		env = append(env, shim.EnvChannelFD+"="+n, "NODE_CHANNEL_FD="+n, "NODE_CHANNEL_SERIALIZATION_MODE=json")
	}
	attr := &syscall.ProcAttr{
		Dir:   spec.Dir,
		Env:   env,
		Files: files,
		Sys: &syscall.SysProcAttr{
			// A worker leads its own process group: a Ctrl-C at a terminal
			// reaches only the primary, which drains the workers in order,
			// and a stuck worker is killed with all it started.
			Setpgid: true,
			// Fires when the thread that forked the worker exits, so that
			// thread stays locked until the worker is reaped (see wait).
			Pdeathsig: syscall.SIGKILL,
			// Go switches the user before it sets Pdeathsig, which the
			// switch would otherwise clear.
			Credential: l.Credential,
		},
	}

	p := &osProcess{
		ready:   make(chan struct{}),
		done:    make(chan struct{}),
		started: time.Now(),
		sock:    sock,
		log:     log.With(zap.Int("slot", slot), zap.Int("generation", spec.Generation)),
		opened:  make(chan struct{}),
	}
	forked := make(chan error, 1)
	// The shim execs its argv[1:] (see internal/shim): argv[0] is its own.
	go p.forkAndWait(self, append([]string{self}, spec.Args...), attr, forked)
	err = <-forked
	unix.Close(pipe[1])
	if chanFD >= 0 {
		unix.Close(workerEnd)
	}
	if err != nil {
		unix.Close(pipe[0])
		sock.Close()
		if chanFD >= 0 {
			unix.Close(chanFD)
		}
		return nil, fmt.Errorf("%w: %v", errNotStarted, err)
	}
	p.log = p.log.With(zap.Int("pid", p.pid))
	if chanFD >= 0 {
		p.openChannel(chanFD, slot, spec.Generation, l.OnMessage)
	}
	// Before opened: the reaper reads it once opened is closed.
	p.copied = make(chan struct{})
	close(p.opened)

	if l.Output != nil {
		l.Output.forward(p, slot, spec.Generation, wout, os.NewFile(uintptr(pipe[0]), "worker-stderr"))
	} else {
		go p.copyStderr(os.NewFile(uintptr(pipe[0]), "worker-stderr"), l.stderrWriter())
	}
	go p.readNotify()
	if l.Ready == ReadyDelay {
		go p.readyAfter(l.ReadyDelay)
	}
	return p, nil
}

func (l *OSLauncher) stderrWriter() func([]byte) {
	w := l.Stderr
	if w == nil {
		w = os.Stderr
	}
	return func(line []byte) {
		l.stderrMu.Lock()
		w.Write(line)
		l.stderrMu.Unlock()
	}
}

type osProcess struct {
	pid     int
	started time.Time
	ready   chan struct{}
	done    chan struct{}
	copied  chan struct{}
	sock    *sdnotify.Socket
	log     *zap.Logger
	ch      *channel.Conn // nil without a message channel
	opened  chan struct{} // closed once Launch has set ch

	readyOnce sync.Once
	// watchdog is the UnixNano of the last WATCHDOG=1 (0: never);
	// triggered is set at WATCHDOG=trigger.
	watchdog  atomic.Int64
	triggered atomic.Bool
	mu        sync.Mutex
	exited    bool // the worker has exited; its pid may not be signalled
	exit      Exit
	tail      tailBuffer
}

func (p *osProcess) Pid() int               { return p.pid }
func (p *osProcess) Ready() <-chan struct{} { return p.ready }
func (p *osProcess) Done() <-chan struct{}  { return p.done }

// Watchdog implements WatchdogReporter.
func (p *osProcess) Watchdog() (time.Time, bool) {
	var last time.Time
	if ns := p.watchdog.Load(); ns != 0 {
		last = time.Unix(0, ns)
	}
	return last, p.triggered.Load()
}

func (p *osProcess) Exit() Exit {
	<-p.done
	return p.exit
}

func (p *osProcess) Signal(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exited {
		return os.ErrProcessDone
	}
	return unix.Kill(p.pid, sig)
}

func (p *osProcess) Kill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.exited {
		unix.Kill(-p.pid, unix.SIGKILL)
		unix.Kill(p.pid, unix.SIGKILL)
	}
}

func (p *osProcess) markReady() {
	p.readyOnce.Do(func() { close(p.ready) })
}

// forkAndWait forks the worker and waits for it on one locked OS thread, so
// that Pdeathsig fires only when the primary itself dies
// (golang/go#27505). The thread ends with the goroutine, after the reap.
func (p *osProcess) forkAndWait(self string, argv []string, attr *syscall.ProcAttr, forked chan<- error) {
	runtime.LockOSThread()
	pid, err := syscall.ForkExec(self, argv, attr)
	if err != nil {
		runtime.UnlockOSThread()
		forked <- err
		return
	}
	p.pid = pid
	forked <- nil

	// Wait for the exit without reaping: until the reap the pid cannot be
	// reused, so Signal and Kill never reach another process.
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err != unix.EINTR {
			break
		}
	}
	p.mu.Lock()
	// What the worker started in its process group goes with it: an orphan
	// would keep the listening socket open.
	unix.Kill(-pid, unix.SIGKILL)
	var ws unix.WaitStatus
	for {
		_, err := unix.Wait4(pid, &ws, 0, nil)
		if err != unix.EINTR {
			break
		}
	}
	p.exited = true
	p.mu.Unlock()
	uptime := time.Since(p.started)

	p.sock.Close()
	<-p.opened
	if p.ch != nil {
		// What the worker sent before it exited is still read: the
		// channel ends by itself once nothing holds the worker's end.
		select {
		case <-p.ch.Done():
		case <-time.After(200 * time.Millisecond):
			p.ch.Close()
		}
	}
	// The stderr pipe reaches EOF when the worker has gone, unless
	// something it started still holds it: do not wait for that long.
	select {
	case <-p.copied:
	case <-time.After(200 * time.Millisecond):
	}
	p.exit = Exit{Status: StatusString(ws), Code: -1, Uptime: uptime, StderrTail: p.tail.String()}
	if ws.Exited() {
		p.exit.Code = ws.ExitStatus()
	}
	close(p.done)
}

// StatusString describes a wait status as os.ProcessState does:
// "exit status 3", "signal: killed".
func StatusString(ws unix.WaitStatus) string {
	switch {
	case ws.Exited():
		return "exit status " + strconv.Itoa(ws.ExitStatus())
	case ws.Signaled():
		return "signal: " + ws.Signal().String()
	default:
		return fmt.Sprintf("wait status %#x", uint32(ws))
	}
}

func (p *osProcess) copyStderr(r *os.File, write func([]byte)) {
	defer close(p.copied)
	defer r.Close()
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			p.tail.Write(line)
			if line[len(line)-1] != '\n' && err != bufio.ErrBufferFull {
				line = append(line, '\n')
			}
			write(line)
		}
		if err != nil && err != bufio.ErrBufferFull {
			return
		}
	}
}

func (p *osProcess) readNotify() {
	for {
		m, err := p.sock.Read()
		if err != nil {
			return
		}
		if m.Status != "" {
			p.log.Info("worker status", zap.String("status", m.Status))
		}
		if m.Stopping {
			p.log.Info("worker stopping")
		}
		if m.Ready {
			p.markReady()
		}
		if m.Watchdog {
			p.watchdog.Store(time.Now().UnixNano())
		}
		if m.Fields["WATCHDOG"] == "trigger" && !p.triggered.Swap(true) {
			p.log.Warn("worker watchdog triggered")
		}
	}
}

// Message is a value a worker sent on its message channel.
type Message struct {
	Slot, Pid, Generation int
	// Data is one JSON value.
	Data []byte
	// Reply sends one JSON value back to this very worker (not to its
	// slot, which may hold another worker by then).
	Reply func(data []byte) error
}

// Control is a message of handoff's own on the channel: an object with a
// "handoff" key. "ready" marks the worker ready (like READY=1), "status"
// logs Status (like STATUS=), "stopping" logs that it drains (STOPPING=1).
type Control struct {
	Handoff string `json:"handoff"`
	Status  string `json:"status,omitempty"`
}

// ErrNoChannel is returned when sending to a worker without a message
// channel.
var ErrNoChannel = errors.New("worker has no message channel")

// Send queues one JSON value for the worker; it never blocks.
func (p *osProcess) Send(data []byte) error {
	<-p.opened
	if p.ch == nil {
		return ErrNoChannel
	}
	return p.ch.SendRaw(data)
}

func (p *osProcess) openChannel(fd, slot, gen int, onMessage func(Message)) {
	nc, err := channel.FromFDConn(fd)
	if err != nil {
		p.log.Warn("worker message channel unusable", zap.Error(err))
		return
	}
	p.ch = channel.New(nc, channel.Options{
		OnMessage: func(line []byte) {
			if ctl, ok := ParseControl(line); ok {
				p.control(ctl)
				return
			}
			if onMessage == nil {
				p.log.Debug("worker message", zap.ByteString("data", line))
				return
			}
			onMessage(Message{Slot: slot, Pid: p.pid, Generation: gen, Data: line, Reply: p.Send})
		},
		OnClose: func(err error) {
			if err != nil {
				p.log.Warn("worker message channel failed", zap.Error(err))
			}
		},
	})
}

func (p *osProcess) control(c Control) {
	switch c.Handoff {
	case "ready":
		p.markReady()
	case "status":
		p.log.Info("worker status", zap.String("status", c.Status))
	case "stopping":
		p.log.Info("worker stopping")
	default:
		p.log.Warn("worker sent an unknown control message", zap.String("handoff", c.Handoff))
	}
}

// ParseControl recognises a control message: a JSON object with a string
// "handoff" key.
func ParseControl(line []byte) (Control, bool) {
	if len(line) == 0 || line[0] != '{' || !bytes.Contains(line, []byte(`"handoff"`)) {
		return Control{}, false
	}
	var c Control
	if json.Unmarshal(line, &c) != nil || c.Handoff == "" {
		return Control{}, false
	}
	return c, true
}

func (p *osProcess) readyAfter(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		p.markReady()
	case <-p.done:
	}
}

// tailBuffer keeps the last stderrTailBytes written, cut at a line start.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (t *tailBuffer) Write(b []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, b...)
	if len(t.buf) > 2*stderrTailBytes {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-stderrTailBytes:]...)
	}
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	b := t.buf
	if len(b) > stderrTailBytes {
		b = b[len(b)-stderrTailBytes:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 && i < len(b)-1 {
			b = b[i+1:]
		}
	}
	return strings.TrimRight(string(b), "\n")
}
