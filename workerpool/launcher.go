//go:build linux

package workerpool

import (
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
	"unsafe"

	"github.com/handoff-dev/handoff/internal/pin"
	"github.com/handoff-dev/handoff/internal/sdnotify"
	"github.com/handoff-dev/handoff/internal/shim"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

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
	// Probe, with ReadyProbe, decides when a worker is ready: it probes
	// the worker pid, whose own listening sockets are listeners (the
	// launcher's when nil), until it passes (true) or done is closed (the
	// worker exited: false), telling note, after each failure, why it is
	// not ready yet.
	Probe func(pid int, listeners []int, done <-chan struct{}, note func(string)) bool
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
	// PrepareFD, if set, gives each worker one more fd (see ExtraFD): bind
	// adoption's channel to the primary (internal/adopt), for a worker
	// whose listeners are the raw fds listeners.
	PrepareFD func(slot, generation int, listeners []int) (*ExtraFD, error)

	seq      atomic.Uint64
	stderrMu sync.Mutex
}

var errNotStarted = errors.New("worker did not start")

// Launch starts one worker and returns once it has been forked. Its
// listeners are fds 3, 4, …: listeners if not nil, else l.Listeners.
//
// Its steps, in order: the pinned file, the extra fd (PrepareFD) and the
// stdout pipe; the worker's own descriptors (openFDs); its environment
// and fd table (command, with execPinned); the fork (start); then what
// follows the worker from the primary's side (wire, watchReady).
func (l *OSLauncher) Launch(slot int, spec *Spec, listeners []int) (Process, error) {
	if listeners == nil {
		listeners = l.Listeners
	}
	w := &launching{l: l, slot: slot, spec: spec, listeners: listeners, argv: spec.Args, chanFD: -1, execFD: -1}
	// The generation's pinned file: open before anything else, so that a
	// pin that cannot be exec'd any more fails the launch with nothing to
	// undo. Its descriptor is the worker's until the fork.
	var exe *os.File
	var err error
	if spec.Pin != nil {
		if exe, w.argv, w.note, err = spec.Pin.Exec(spec.Args); err != nil {
			return nil, err
		}
		if exe != nil {
			defer exe.Close()
		}
	}
	if w.extra, err = l.prepareFD(slot, spec.Generation, listeners); err != nil {
		return nil, err
	}
	defer w.extra.release()
	if w.wout, err = l.Output.stdoutPipe(); err != nil {
		return nil, err
	}
	defer w.wout.close()
	if err := w.openFDs(); err != nil {
		return nil, err
	}
	defer unix.Close(w.devnull)

	w.command(exe)
	attr := w.procAttr()
	p := w.newProcess()
	if err := w.start(p, attr); err != nil {
		return nil, err
	}
	w.wire(p)
	return p, nil
}

// launching is one Launch under way: the worker it starts, and what is
// opened and built for it, step by step.
type launching struct {
	l         *OSLauncher
	slot      int
	spec      *Spec
	listeners []int
	argv      []string // what the shim execs (the pin's, with a pin)
	note      string   // why a pinned script runs from its path (see Pinned.Exec)
	extra     *ExtraFD
	wout      *workerStdout

	// openFDs
	sockPath  string
	sock      *sdnotify.Socket
	devnull   int
	stderr    [2]int // the worker's stderr pipe: the primary's end, the worker's
	chanFD    int    // the primary's end of the message channel; -1 for none
	workerEnd int    // the worker's end of it

	// command
	env    []string
	files  []uintptr
	verify func(pid int) error // checks the pinned file at its exec (traceExec)
	passed *os.File            // the launcher's descriptor of that file
	execFD int                 // its descriptor in the shim; -1 for none
}

// self is the shim executable.
func (l *OSLauncher) self() string {
	if l.Self == "" {
		return "/proc/self/exe"
	}
	return l.Self
}

// stdout is what a worker without a stdout pipe inherits.
func (l *OSLauncher) stdout() *os.File {
	if l.Stdout == nil {
		return os.Stdout
	}
	return l.Stdout
}

// openFDs opens the worker's own descriptors: its notify socket (the
// worker's user's, with Credential), its stdin (/dev/null), its stderr
// pipe and, with Channel, its message channel. If one fails, those opened
// before are closed.
func (w *launching) openFDs() error {
	l := w.l
	w.sockPath = filepath.Join(l.NotifyDir, fmt.Sprintf("w%d-%d.sock", w.slot, l.seq.Add(1)))
	sock, err := sdnotify.Listen(w.sockPath)
	if err != nil {
		return err
	}
	if c := l.Credential; c != nil {
		if err := os.Chown(w.sockPath, int(c.Uid), int(c.Gid)); err != nil {
			sock.Close()
			return fmt.Errorf("notify socket: %w", err)
		}
	}
	devnull, err := unix.Open(os.DevNull, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		sock.Close()
		return err
	}
	if err := unix.Pipe2(w.stderr[:], unix.O_CLOEXEC); err != nil {
		sock.Close()
		unix.Close(devnull)
		return err
	}
	if l.Channel {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			sock.Close()
			unix.Close(w.stderr[0])
			unix.Close(w.stderr[1])
			unix.Close(devnull)
			return fmt.Errorf("message channel: %v", err)
		}
		w.chanFD, w.workerEnd = fds[0], fds[1]
	}
	w.sock, w.devnull = sock, devnull
	return nil
}

// command builds the worker's environment and fd table: stdin, stdout,
// stderr, the listeners, the message channel, the pinned file exe (if not
// nil: execPinned), the extra fd.
func (w *launching) command(exe *os.File) {
	l, spec := w.l, w.spec
	env := make([]string, 0, len(spec.Env)+6)
	env = append(env, spec.Env...)
	env = append(env,
		"LISTEN_FDS="+strconv.Itoa(len(w.listeners)),
		"LISTEN_FDNAMES="+strings.Join(l.Names, ":"),
		"NOTIFY_SOCKET="+w.sockPath,
		"HANDOFF_WORKER="+strconv.Itoa(w.slot),
		"HANDOFF_GENERATION="+strconv.Itoa(spec.Generation),
		shim.EnvMarker+"="+spec.Path,
	)
	if l.Watchdog > 0 {
		env = append(env, "WATCHDOG_USEC="+strconv.FormatInt(l.Watchdog.Microseconds(), 10))
	}
	files := []uintptr{uintptr(w.devnull), w.wout.fd(l.stdout()), uintptr(w.stderr[1])}
	for _, fd := range w.listeners {
		files = append(files, uintptr(fd))
	}
	if w.chanFD >= 0 {
		n := strconv.Itoa(len(files))
		files = append(files, uintptr(w.workerEnd))
		env = append(env, shim.EnvChannelFD+"="+n, "NODE_CHANNEL_FD="+n, "NODE_CHANNEL_SERIALIZATION_MODE=json")
	}
	w.files, w.env = files, env
	if exe != nil {
		w.execPinned(exe)
	}
	w.files, w.env = w.extra.add(w.files, w.env)
}

// execPinned passes exe, the pinned file, past the listeners and the
// channel: the shim execs it (see internal/shim's pinned.go), through a
// link named like the command so that the worker is named after it, and
// stops right after the exec for the pin to verify what it runs
// (traceExec).
func (w *launching) execPinned(exe *os.File) {
	n := len(w.files)
	w.files = append(w.files, exe.Fd())
	w.env = append(w.env, shim.EnvExecFD+"="+strconv.Itoa(n), shim.EnvExecTrace+"=1")
	if link, err := pin.ExecLink(w.l.NotifyDir, n, filepath.Base(w.spec.Path)); err == nil {
		w.env = append(w.env, shim.EnvExecVia+"="+link)
	}
	// A descriptor of what the shim execs outlives Launch: the check at
	// the exec looks at it where it may not look at the worker
	// (pin.File.VerifyExec).
	if fd, err := unix.FcntlInt(exe.Fd(), unix.F_DUPFD_CLOEXEC, 0); err == nil {
		w.passed = os.NewFile(uintptr(fd), exe.Name())
	}
	pinned, passed := w.spec.Pin, w.passed
	w.verify = func(pid int) error { return pinned.VerifyExec(pid, passed) }
	w.execFD = n
}

// procAttr is how the worker is forked: in the spec's directory, with
// command's environment and fd table.
func (w *launching) procAttr() *syscall.ProcAttr {
	return &syscall.ProcAttr{
		Dir:   w.spec.Dir,
		Env:   w.env,
		Files: w.files,
		Sys: &syscall.SysProcAttr{
			// A worker leads its own process group: a Ctrl-C at a terminal
			// reaches only the primary, which drains the workers in order,
			// and a stuck worker is killed with all it started.
			Setpgid: true,
			// Fires when the thread that forked the worker exits, so that
			// thread stays locked until the worker is reaped (see forkAndWait).
			Pdeathsig: syscall.SIGKILL,
			// Go switches the user before it sets Pdeathsig, which the
			// switch would otherwise clear.
			Credential: w.l.Credential,
		},
	}
}

// newProcess is the worker's osProcess, before the fork.
func (w *launching) newProcess() *osProcess {
	l := w.l
	log := l.Logger
	if log == nil {
		log = zap.NewNop()
	}
	return &osProcess{
		execFD:  w.execFD,
		passed:  w.passed,
		ready:   make(chan struct{}),
		done:    make(chan struct{}),
		started: time.Now(),
		probed:  l.Ready == ReadyProbe && l.Probe != nil,
		sock:    w.sock,
		log:     log.With(zap.Int("slot", w.slot), zap.Int("generation", w.spec.Generation)),
		opened:  make(chan struct{}),
	}
}

// start forks the worker as p (forkAndWait, on a goroutine of its own)
// and waits for the fork. The worker's ends of its stderr pipe and
// channel are closed then, and if the fork failed, every descriptor
// opened for the worker.
func (w *launching) start(p *osProcess, attr *syscall.ProcAttr) error {
	self := w.l.self()
	forked := make(chan error, 1)
	// The shim execs its argv[1:] (see internal/shim): argv[0] is its own.
	go p.forkAndWait(self, append([]string{self}, w.argv...), attr, w.verify, forked)
	err := <-forked
	unix.Close(w.stderr[1])
	if w.chanFD >= 0 {
		unix.Close(w.workerEnd)
	}
	if err != nil {
		unix.Close(w.stderr[0])
		w.sock.Close()
		if w.chanFD >= 0 {
			unix.Close(w.chanFD)
		}
		if w.passed != nil {
			w.passed.Close() // forkAndWait closes it only after a fork
		}
		return fmt.Errorf("%w: %v", errNotStarted, err)
	}
	return nil
}

// wire follows p, forked, from the primary's side: its pid in its log
// fields, the extra fd handed over, the message channel, its stderr (and
// stdout) forwarded, then what makes it ready (watchReady).
func (w *launching) wire(p *osProcess) {
	l := w.l
	p.log = p.log.With(zap.Int("pid", p.pid))
	if w.note != "" {
		p.log.Warn("worker script changed", zap.String("path", w.spec.Path), zap.String("reason", w.note+": running it from its path"))
	}
	w.extra.forked(p.pid, p.markReady)
	if w.chanFD >= 0 {
		p.openChannel(w.chanFD, w.slot, w.spec.Generation, l.OnMessage)
	}
	// Before opened: the reaper reads it once opened is closed.
	p.copied = make(chan struct{})
	close(p.opened)

	if l.Output != nil {
		l.Output.forward(p, w.slot, w.spec.Generation, w.wout, os.NewFile(uintptr(w.stderr[0]), "worker-stderr"))
	} else {
		go p.copyStderr(os.NewFile(uintptr(w.stderr[0]), "worker-stderr"), l.stderrWriter())
	}
	l.watchReady(p, w.listeners)
}

// watchReady reads p's notify socket, and starts what else makes it
// ready as l.Ready says: a delay, or the probe (through listeners).
func (l *OSLauncher) watchReady(p *osProcess, listeners []int) {
	go p.readNotify()
	if l.Ready == ReadyDelay || (l.Ready == ReadyBind && l.ReadyDelay > 0) {
		go p.readyAfter(l.ReadyDelay)
	}
	if p.probed {
		go func() {
			note := func(s string) { p.notReady.Store(&s) }
			if l.Probe(p.pid, listeners, p.done, note) {
				p.readyOnce.Do(func() { close(p.ready) })
			}
		}()
	}
}

// forkAndWait forks the worker and waits for it on one locked OS thread, so
// that Pdeathsig fires only when the primary itself dies
// (golang/go#27505). The thread ends with the goroutine, after the reap.
func (p *osProcess) forkAndWait(self string, argv []string, attr *syscall.ProcAttr, verify func(int) error, forked chan<- error) {
	runtime.LockOSThread()
	pid, err := syscall.ForkExec(self, argv, attr)
	if err != nil {
		runtime.UnlockOSThread()
		forked <- err
		return
	}
	p.pid = pid
	log := p.log.With(zap.Int("pid", pid)) // before Launch goes on
	forked <- nil
	if verify != nil {
		p.traceExec(self, verify, log)
	}
	if p.passed != nil {
		p.passed.Close()
	}
	ws := p.reap()
	uptime := time.Since(p.started)
	p.finish(ws, uptime)
}

// reap waits for the worker's exit, kills what it started in its process
// group, and reaps it.
func (p *osProcess) reap() unix.WaitStatus {
	pid := p.pid
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
	defer p.mu.Unlock()
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
	return ws
}

// finish ends the worker's life as a process, reaped with ws after
// uptime: its notify socket closes, what it sent on its channel and wrote
// to its stderr is read (bounded), then its Exit is set and Done closed.
func (p *osProcess) finish(ws unix.WaitStatus, uptime time.Duration) {
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

// traceExec follows the worker, which asked the thread that forked it
// (this one) to trace it (shim.EnvExecTrace), to its exec of the pinned
// file. The signals the shim gets meanwhile are passed on. At the stop
// right after the exec, before the program has run an instruction, verify
// checks what it runs (the kernel refuses writes into a file being
// executed from the exec on): a worker that would run other content than
// the pinned one is killed there, with the reason at the end of its
// stderr. It returns once the worker is let go, or has exited (the caller
// reaps it). A shim that could not ask to be traced is never stopped:
// only the check before the fork (Pinned.Exec) applies then.
func (p *osProcess) traceExec(self string, verify func(int) error, log *zap.Logger) {
	pid := p.pid
	shimID, _ := fileID(self)
	for {
		var info chldInfo
		err := unix.Waitid(unix.P_PID, pid, info.siginfo(), unix.WEXITED|unix.WSTOPPED|unix.WNOWAIT, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil || (info.Code != cldTrapped && info.Code != cldStopped) {
			return
		}
		// Consume the stop that was peeked at.
		for unix.Waitid(unix.P_PID, pid, info.siginfo(), unix.WSTOPPED, nil) == unix.EINTR {
		}
		sig := syscall.Signal(info.Status)
		switch sig {
		case syscall.SIGTRAP:
			if !p.execed(pid, shimID) {
				break // not the exec yet
			}
			if err := verify(pid); err != nil {
				p.tail.Write([]byte("handoff: worker killed at its exec: " + err.Error() + "\n"))
				log.Error("worker killed at its exec", zap.String("reason", err.Error()))
				unix.Kill(pid, unix.SIGKILL)
			}
			unix.PtraceDetach(pid)
			return
		case syscall.SIGSTOP, syscall.SIGTSTP, syscall.SIGTTIN, syscall.SIGTTOU:
			// Passed on, a stop signal would stop the tracee again and
			// again; a worker starting is not stopped.
			sig = 0
		}
		unix.PtraceCont(pid, int(sig))
	}
}

// execed tells whether the worker, stopped by a SIGTRAP, has done its
// exec: it runs another file than the shim, or, where the command is the
// shim's own executable (library mode: a program is its own exec step),
// the pinned file's descriptor is gone (the shim marked it close-on-exec,
// and the exec closes such descriptors before it stops).
func (p *osProcess) execed(pid int, shimID devIno) bool {
	if id, err := fileID(fmt.Sprintf("/proc/%d/exe", pid)); err != nil || id != shimID {
		return true
	}
	var st unix.Stat_t
	return unix.Lstat(fmt.Sprintf("/proc/%d/fd/%d", pid, p.execFD), &st) != nil
}

// chldInfo is unix.Siginfo as waitid fills it for a child (SIGCHLD's
// fields).
type chldInfo struct {
	Signo, Errno, Code, _ int32
	Pid                   int32
	UID                   uint32
	Status                int32
	_                     [100]byte
}

func (c *chldInfo) siginfo() *unix.Siginfo { return (*unix.Siginfo)(unsafe.Pointer(c)) }

// chldInfo and unix.Siginfo have one size.
var (
	_ [unsafe.Sizeof(unix.Siginfo{}) - unsafe.Sizeof(chldInfo{})]byte
	_ [unsafe.Sizeof(chldInfo{}) - unsafe.Sizeof(unix.Siginfo{})]byte
)

// The si_code of a stopped child: a ptrace stop, a job-control stop.
const (
	cldTrapped = 4
	cldStopped = 5
)

type devIno struct{ dev, ino uint64 }

// fileID is the device and inode of the file at path.
func fileID(path string) (devIno, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return devIno{}, err
	}
	return devIno{uint64(st.Dev), st.Ino}, nil
}
