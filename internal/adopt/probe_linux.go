//go:build linux && (amd64 || arm64)

package adopt

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Time bounds of the probe's round trip, which takes well under a
// millisecond where it works: in this process, and with a process to
// start (the primary's executable, on a machine that may be busy).
const (
	probeTimeout       = 2 * time.Second
	probeWorkerTimeout = 15 * time.Second
)

// EnvProbe, in the environment of a process that ProbeWorker started, makes
// it the probe's target as soon as this package is initialised: its value
// is "SOCK,LISTENER,PORT" (its fds and the listener's port).
const EnvProbe = "HANDOFF_ADOPT_PROBE"

// The probe's target, in a process ProbeWorker started: the primary's own
// executable, which links this package, so it is always there to answer.
func init() {
	if v, ok := os.LookupEnv(EnvProbe); ok {
		os.Exit(probeProcess(v))
	}
}

// Probe reports whether binds can be adopted on this system: nil if so,
// else why not. It runs the whole round once, inside this process but on
// an OS thread of its own that ends with the probe: no_new_privs and the
// filter go on that thread alone, which then binds port 0 (which must run
// untouched) and the address of a listening socket of the probe's (which
// must come back as that very socket), answered by the code that answers
// workers. It takes well under a millisecond.
//
// In its own process the probe never needs the right to trace: the
// primary's workers may not grant it (see ProbeWorker).
func Probe() error {
	pr, err := newProbe()
	if err != nil {
		return err
	}
	defer pr.close()
	peer := pr.peer
	pr.peer = -1 // the target's now
	go func() {
		// Never unlocked: the thread carries the filter and no_new_privs,
		// and ends with this goroutine. (Go never starts a thread from a
		// locked one, so nothing else inherits them.)
		runtime.LockOSThread()
		probeTarget(peer, pr.lfd, pr.port)
	}()
	return pr.answer(probeTimeout, nil)
}

// ProbeOptions says how the workers run, for ProbeWorker.
type ProbeOptions struct {
	// Credential is the workers' user and groups (nil: the primary's).
	Credential *syscall.Credential
	// Env is the workers' environment.
	Env []string
	// Exe is the primary's executable ("": /proc/self/exe), which the
	// workers' exec step is too.
	Exe string
}

// ProbeWorker is Probe with its target in a process of its own, started
// from the primary's executable as the workers are (their user and groups,
// no capability the primary would not give them) and answered by this
// process as it is (its own capabilities, Yama's and the LSMs' rules): the
// primary must be allowed to read a worker's memory and take a copy of its
// fd, which a root primary without CAP_SYS_PTRACE is not for workers of
// another user (--user, under Docker's default capabilities). It takes a
// few milliseconds.
func ProbeWorker(o ProbeOptions) error {
	exe := o.Exe
	if exe == "" {
		exe = "/proc/self/exe"
	}
	pr, err := newProbe()
	if err != nil {
		return err
	}
	defer pr.close()
	var files []*os.File
	for _, fd := range []int{pr.peer, pr.lfd} {
		dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 3)
		if err != nil {
			return fmt.Errorf("probe: %w", err)
		}
		f := os.NewFile(uintptr(dup), "adopt-probe")
		defer f.Close()
		files = append(files, f)
	}
	var stderr bytes.Buffer
	cmd := &exec.Cmd{
		Path:       exe,
		Args:       []string{exe},
		Env:        append(o.Env[:len(o.Env):len(o.Env)], EnvProbe+"=3,4,"+strconv.Itoa(pr.port)),
		ExtraFiles: files,
		Stderr:     &stderr,
		// Pdeathsig is the forking thread's: it stays locked until the
		// process is reaped.
		SysProcAttr: &syscall.SysProcAttr{Credential: o.Credential, Pdeathsig: syscall.SIGKILL},
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("cannot start a probe process as the workers run: %w", err)
	}
	for _, f := range files {
		f.Close()
	}
	unix.Close(pr.peer)
	pr.peer = -1
	err = pr.answer(probeWorkerTimeout, o.Credential)
	if err != nil {
		cmd.Process.Kill()
	}
	werr := cmd.Wait()
	if errors.Is(err, errProbeEnded) {
		line := strings.TrimSpace(stderr.String())
		if i := strings.LastIndexByte(line, '\n'); i >= 0 {
			line = line[i+1:]
		}
		if line != "" {
			return fmt.Errorf("the probe process ended (%v): %s", werr, line)
		}
		return fmt.Errorf("the probe process ended (%v)", werr)
	}
	return err
}

// probe is the primary's side of a probe: a listener of its own, a
// Supervisor of it, and a socket pair to the target.
type probe struct {
	s               *Supervisor
	lfd, port       int
	sock, peer      int
	handshakeFailed bool
}

func newProbe() (*probe, error) {
	lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("probe socket: %w", err)
	}
	pr := &probe{lfd: lfd, sock: -1, peer: -1}
	loopback := [4]byte{127, 0, 0, 1}
	if err := unix.Bind(lfd, &unix.SockaddrInet4{Addr: loopback}); err != nil {
		pr.close()
		return nil, fmt.Errorf("probe socket: %w", err)
	}
	if err := unix.Listen(lfd, 1); err != nil {
		pr.close()
		return nil, fmt.Errorf("probe socket: %w", err)
	}
	sa, err := unix.Getsockname(lfd)
	if err != nil {
		pr.close()
		return nil, fmt.Errorf("probe socket: %w", err)
	}
	pr.port = sa.(*unix.SockaddrInet4).Port
	pr.s, err = NewSupervisor([]Listener{{Name: "probe", Network: "tcp", Addr: "127.0.0.1:" + strconv.Itoa(pr.port), FD: lfd}}, nil)
	if err != nil {
		pr.close()
		return nil, err
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		pr.close()
		return nil, fmt.Errorf("probe: %w", err)
	}
	pr.sock, pr.peer = fds[0], fds[1]
	return pr, nil
}

func (pr *probe) close() {
	for _, fd := range []int{pr.lfd, pr.sock, pr.peer} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}

// errProbeEnded: the target hung up without a result.
var errProbeEnded = errors.New("the probe's target ended")

// answer receives the target's notification fd and answers its binds
// until it sends its result, within timeout. cred is the target's user,
// for the reason of a refusal.
func (pr *probe) answer(timeout time.Duration, cred *syscall.Credential) error {
	deadline := time.Now().Add(timeout)
	nfd := -1
	defer func() {
		if nfd >= 0 {
			unix.Close(nfd)
		}
	}()
	w := &worker{pidfd: -1, log: zap.NewNop(), adopted: func() {}, bound: make([]bool, 1), targets: pr.s.targets}
	var failed error
	for {
		pfd := []unix.PollFd{{Fd: int32(pr.sock), Events: unix.POLLIN}, {Fd: int32(nfd), Events: unix.POLLIN}}
		wait := time.Until(deadline)
		if wait <= 0 {
			// A bind still waiting for an answer fails with ENOSYS.
			return errors.New("no answer to the probe's bind in time")
		}
		if _, err := unix.Poll(pfd, int(min(wait, 100*time.Millisecond)/time.Millisecond)+1); err != nil && err != unix.EINTR {
			return fmt.Errorf("probe: poll: %w", err)
		}
		if pfd[1].Revents&unix.POLLIN != 0 {
			if err := pr.s.handle(nfd, w); err != nil && failed == nil {
				failed = err
			}
			continue
		}
		if pfd[0].Revents == 0 {
			continue
		}
		msg, fd, err := recvProbe(pr.sock)
		switch {
		case err != nil:
			return fmt.Errorf("probe: %w", err)
		case fd >= 0 && nfd < 0:
			nfd = fd
		case fd >= 0:
			unix.Close(fd)
		case msg == "":
			return errProbeEnded
		case failed != nil:
			return accessError(failed, cred)
		case msg == "ok":
			return nil
		default:
			return errors.New(strings.TrimPrefix(msg, "error: "))
		}
	}
}

// recvProbe reads one message of the target, and the fd it carries (-1
// if none). An empty message is the end.
func recvProbe(sock int) (string, int, error) {
	buf := make([]byte, 1024)
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, _, _, err := unix.Recvmsg(sock, buf, oob, unix.MSG_CMSG_CLOEXEC|unix.MSG_DONTWAIT)
	if err == unix.EAGAIN {
		return "", -1, nil
	}
	if err != nil {
		return "", -1, err
	}
	fd := -1
	if cmsgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
		for _, c := range cmsgs {
			if got, err := unix.ParseUnixRights(&c); err == nil {
				for _, g := range got {
					if fd < 0 {
						fd = g
					} else {
						unix.Close(g)
					}
				}
			}
		}
	}
	return string(buf[:n]), fd, nil
}

// accessError says why the primary could not handle the probe's bind: a
// refusal to read the target's memory or take its fd is a matter of
// privilege.
func accessError(err error, cred *syscall.Credential) error {
	if !errors.Is(err, unix.EPERM) && !errors.Is(err, unix.EACCES) {
		return err
	}
	if cred != nil && cred.Uid != uint32(os.Geteuid()) {
		return fmt.Errorf("the primary may not read the memory of a worker running as uid %d (%v): it needs CAP_SYS_PTRACE for workers of another user (docker run --cap-add SYS_PTRACE), or run the workers as its own user", cred.Uid, err)
	}
	return fmt.Errorf("the primary may not read the memory of its workers (%v): Yama's ptrace_scope or a security module (AppArmor, SELinux) forbids it, or it lacks CAP_SYS_PTRACE", err)
}

// probeProcess is the target in a process of its own (EnvProbe's value
// v); it returns the exit code.
func probeProcess(v string) int {
	var sock, lfd, port int
	if _, err := fmt.Sscanf(v, "%d,%d,%d", &sock, &lfd, &port); err != nil {
		fmt.Fprintf(os.Stderr, "handoff: bad %s=%s\n", EnvProbe, v)
		return 2
	}
	// Never unlocked: the process ends with the probe.
	runtime.LockOSThread()
	probeTarget(sock, lfd, port)
	return 0
}

// probeTarget runs on a thread of its own, locked: it installs the filter
// there, sends the notification fd on sock, binds (probeBinds) and sends
// the result, "ok" or "error: REASON"; then it closes sock.
func probeTarget(sock, lfd, port int) {
	defer unix.Close(sock)
	nfd, err := install(Traps{})
	if err != nil {
		unix.Sendmsg(sock, []byte("error: "+err.Error()), nil, nil, 0)
		return
	}
	err = unix.Sendmsg(sock, []byte("ok"), unix.UnixRights(nfd), nil, 0)
	unix.Close(nfd)
	if err != nil {
		// Nobody would answer: a bind would fail with ENOSYS.
		return
	}
	msg := "ok"
	if err := probeBinds(lfd, port); err != nil {
		msg = "error: " + err.Error()
	}
	unix.Sendmsg(sock, []byte(msg), nil, nil, 0)
}

// probeBinds runs on the filtered thread.
func probeBinds(lfd, port int) error {
	loopback := [4]byte{127, 0, 0, 1}
	other, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(other)
	if err := unix.Bind(other, &unix.SockaddrInet4{Addr: loopback}); err != nil {
		return fmt.Errorf("a bind to port 0 did not run: %w", err)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: loopback, Port: port}); err != nil {
		return fmt.Errorf("a bind to a listener's address was not adopted: %w", err)
	}
	var got, want unix.Stat_t
	if err := unix.Fstat(fd, &got); err != nil {
		return err
	}
	if err := unix.Fstat(lfd, &want); err != nil {
		return err
	}
	if got.Ino != want.Ino || got.Dev != want.Dev {
		return errors.New("a bind to a listener's address did not get the listener")
	}
	if err := unix.Listen(fd, 1); err != nil {
		return fmt.Errorf("listen on an adopted socket: %w", err)
	}
	return nil
}
