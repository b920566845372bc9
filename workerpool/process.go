package workerpool

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/handoff-dev/handoff/internal/channel"
	"github.com/handoff-dev/handoff/internal/sdnotify"
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

type osProcess struct {
	pid int
	// execFD is the pinned file's descriptor in the shim (traceExec).
	execFD int
	// passed is the launcher's descriptor of that file, until the exec
	// has been checked.
	passed  *os.File
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
	// probed: only the launcher's Probe makes the worker ready
	// (ReadyProbe); notReady is its last word on why not yet.
	probed   bool
	notReady atomic.Pointer[string]
	mu       sync.Mutex
	exited   bool // the worker has exited; its pid may not be signalled
	exit     Exit
	tail     tailBuffer
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

// markReady is the worker's own word that it is ready (READY=1, its
// bind, its delay), which a probed worker's readiness does not take.
func (p *osProcess) markReady() {
	if !p.probed {
		p.readyOnce.Do(func() { close(p.ready) })
	}
}

// NotReady says why the worker is not ready yet, as its probe last saw
// it; "" if nothing is known.
func (p *osProcess) NotReady() string {
	if s := p.notReady.Load(); s != nil {
		return *s
	}
	return ""
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

func (p *osProcess) readyAfter(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		p.markReady()
	case <-p.done:
	}
}
