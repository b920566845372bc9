package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// A system is a way to run the bench server and upgrade it in place: the
// deploy-disruption benchmark runs the same load against each.
type system interface {
	name() string
	// start runs the server and returns the address it serves on.
	start(ctx context.Context) (string, error)
	// upgrade replaces the running server by a new process and returns
	// once the old one is gone and the new one answers.
	upgrade(ctx context.Context) error
	stop()
}

// handoffSystem is handoff with n workers: an upgrade is SIGHUP, until the
// upgrade finished and every old worker has drained and exited.
// With library set, bin is examples/hello, its own primary.
type handoffSystem struct {
	bin, server string
	workers     int
	library     bool
	p           *primary
}

func (h *handoffSystem) name() string {
	if h.library {
		return fmt.Sprintf("handoff library mode (examples/hello, %d workers)", h.workers)
	}
	return fmt.Sprintf("handoff (%d workers)", h.workers)
}

func (h *handoffSystem) start(ctx context.Context) (string, error) {
	var (
		p    *primary
		addr string
		err  error
	)
	if h.library {
		p, addr, err = startLibrary(ctx, h.bin, h.workers)
	} else {
		p, addr, err = startPrimary(ctx, h.bin, h.server, h.workers)
	}
	h.p = p
	return addr, err
}

func (h *handoffSystem) upgrade(ctx context.Context) error {
	_, _, err := h.p.deploy(ctx)
	return err
}

func (h *handoffSystem) stop() {
	if h.p != nil {
		h.p.stop()
	}
}

// naiveSystem is what a stop-then-start restarter does (air, nodemon): it
// stops the process (SIGTERM, and the server drains what it has), waits for
// it to exit, then starts the new one on the same port.
type naiveSystem struct {
	server string
	addr   string
	cur    *server
	gen    int
}

func (n *naiveSystem) name() string { return "naive stop-then-start" }

func (n *naiveSystem) start(ctx context.Context) (string, error) {
	addr, err := freeAddr()
	if err != nil {
		return "", err
	}
	n.addr = addr
	return addr, n.launch(ctx)
}

func (n *naiveSystem) launch(ctx context.Context) error {
	n.gen++
	version := "v" + strconv.Itoa(n.gen)
	s, err := startServer(n.server, "--listen", n.addr, "--version", version)
	if err != nil {
		return err
	}
	n.cur = s
	if err := waitAnswer(ctx, n.addr, time.Minute, func(b string) bool { return strings.HasPrefix(b, version+" ") }); err != nil {
		return fmt.Errorf("%w (server: %s)", err, s.stderr)
	}
	return nil
}

func (n *naiveSystem) upgrade(ctx context.Context) error {
	n.cur.stop(syscall.SIGTERM)
	return n.launch(ctx)
}

func (n *naiveSystem) stop() {
	if n.cur != nil {
		n.cur.stop(syscall.SIGTERM)
	}
}

// tableflipSystem is one process that follows tableflip's README: an
// upgrade is SIGHUP to the pid in the pid file, until a new pid is in the
// file and the old process has exited.
type tableflipSystem struct {
	server, dir string
	first       *server
}

func (t *tableflipSystem) name() string { return "tableflip README pattern" }

func (t *tableflipSystem) pidFile() string { return filepath.Join(t.dir, "tableflip.pid") }

func (t *tableflipSystem) start(ctx context.Context) (string, error) {
	addr, err := freeAddr()
	if err != nil {
		return "", err
	}
	s, err := startServer(t.server, "--tableflip", "--pid-file", t.pidFile(), "--listen", addr)
	if err != nil {
		return "", err
	}
	t.first = s
	if _, err := t.waitPID(ctx, 0); err != nil {
		return "", fmt.Errorf("%w (server: %s)", err, s.stderr)
	}
	return addr, waitAnswer(ctx, addr, time.Minute, func(string) bool { return true })
}

// waitPID waits until the pid file names a live process other than old.
func (t *tableflipSystem) waitPID(ctx context.Context, old int) (int, error) {
	read := func() int {
		b, _ := os.ReadFile(t.pidFile())
		pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		return pid
	}
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if pid := read(); pid != 0 && pid != old && !procGone(pid) {
			return pid, nil
		}
		// The old process leaves only after its successor is ready,
		// which writes the pid file first.
		if old != 0 && procGone(old) && read() == old {
			return 0, fmt.Errorf("tableflip: process %d exited with no successor", old)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
	return 0, fmt.Errorf("tableflip: no new pid in %s within a minute", t.pidFile())
}

func (t *tableflipSystem) upgrade(ctx context.Context) error {
	old, err := t.waitPID(ctx, 0)
	if err != nil {
		return err
	}
	if err := syscall.Kill(old, syscall.SIGHUP); err != nil {
		return err
	}
	if _, err := t.waitPID(ctx, old); err != nil {
		return err
	}
	// The old process calls Shutdown once the new one is ready; the
	// window lasts until it has exited.
	for deadline := time.Now().Add(time.Minute); !procGone(old); {
		if time.Now().After(deadline) {
			return fmt.Errorf("tableflip: old process %d still running a minute after the upgrade", old)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
	return nil
}

func (t *tableflipSystem) stop() {
	if b, err := os.ReadFile(t.pidFile()); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && !procGone(pid) {
			syscall.Kill(pid, syscall.SIGTERM)
			for deadline := time.Now().Add(30 * time.Second); !procGone(pid) && time.Now().Before(deadline); {
				time.Sleep(5 * time.Millisecond)
			}
			if !procGone(pid) {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	if t.first != nil {
		select {
		case <-t.first.exited:
		case <-time.After(30 * time.Second):
			t.first.cmd.Process.Kill()
			<-t.first.exited
		}
	}
}
