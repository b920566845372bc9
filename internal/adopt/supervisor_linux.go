//go:build linux && (amd64 || arm64)

package adopt

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Kernel structures of include/uapi/linux/seccomp.h (golang.org/x/sys/unix
// has the constants, not these).
type seccompData struct {
	Nr                 int32
	Arch               uint32
	InstructionPointer uint64
	Args               [6]uint64
}

type notif struct {
	ID    uint64
	Pid   uint32
	Flags uint32
	Data  seccompData
}

type notifResp struct {
	ID    uint64
	Val   int64
	Error int32
	Flags uint32
}

type notifAddfd struct {
	ID         uint64
	Flags      uint32
	Srcfd      uint32
	Newfd      uint32
	NewfdFlags uint32
}

type notifSizes struct {
	Notif, NotifResp, Data uint16
}

// Supervisor answers the binds of the workers it prepared: it installs a
// listener at the fd of a bind that names the listener's address, and lets
// every other bind run. Each worker's notification fd is waited on through
// Go's netpoller (no thread per worker); each notification is answered at
// once, with system calls that never wait on the worker.
type Supervisor struct {
	targets []target
	// traps: the calls besides bind and listen the workers' filters send
	// here (a unix listener's unlink; a shared listener's shutdown and
	// connect).
	traps Traps
	log   *zap.Logger
	// Buffer sizes of the ioctls, at least our structures' (the kernel
	// writes its own size, which a newer kernel may have grown).
	recvSize, respSize int

	// keepLeft is how many exited workers of one slot may keep their
	// notification fd served (for processes they left running); the
	// oldest past that are stopped.
	keepLeft int
	// shareGrace is how long after a worker's first adopted bind the
	// listeners it left on the same port are looked at (sharedPort).
	shareGrace time.Duration
	// sharedPort lists, for each target, the other TCP targets on its
	// port: a program that binds the port once adopts only one of them.
	sharedPort [][]int
	// warnings rate-limits the per-call warnings; guards, those of
	// guardCall.
	warnings, guards limiter

	mu     sync.Mutex
	closed bool
	files  map[*os.File]struct{}
	// slots holds the workers whose notification fd is served, by slot,
	// oldest first.
	slots map[int][]*worker
	// unadopted: a "listener not adopted" warning was logged for that
	// target.
	unadopted []bool
	wg        sync.WaitGroup
}

// Defaults of a Supervisor's limits (tests change them).
const (
	// keepLeft: more exited workers of a slot that left processes under
	// the filter are not served; each costs the primary a goroutine and
	// two fds.
	defaultKeepLeft = 4
	// shareGrace: a program that binds several addresses does so within
	// moments of its first bind.
	defaultShareGrace = 2 * time.Second
	// warnEvery: at most one warning of a kind per interval, then their
	// number.
	defaultWarnEvery = 10 * time.Second
)

// NewSupervisor makes a Supervisor of the listeners, logging to log (nil:
// nowhere).
func NewSupervisor(ls []Listener, log *zap.Logger) (*Supervisor, error) {
	if log == nil {
		log = zap.NewNop()
	}
	var sizes notifSizes
	if _, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_GET_NOTIF_SIZES, 0, uintptr(unsafe.Pointer(&sizes))); errno != 0 {
		return nil, installError(errno)
	}
	s := &Supervisor{
		log:      log,
		recvSize: max(int(sizes.Notif), int(unsafe.Sizeof(notif{}))),
		respSize: max(int(sizes.NotifResp), int(unsafe.Sizeof(notifResp{}))),
		files:    map[*os.File]struct{}{},
		slots:    map[int][]*worker{},

		keepLeft:   defaultKeepLeft,
		shareGrace: defaultShareGrace,
		warnings:   limiter{every: defaultWarnEvery},
		guards:     limiter{every: defaultWarnEvery},
	}
	cwd, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	for _, l := range ls {
		t, ok := parseTarget(l, cwd)
		if !ok {
			return nil, fmt.Errorf("cannot adopt binds to %s %s", l.Network, l.Addr)
		}
		var st unix.Stat_t
		if err := unix.Fstat(l.FD, &st); err != nil {
			return nil, fmt.Errorf("listener %s: %w", l.Addr, err)
		}
		t.dev, t.ino = st.Dev, st.Ino
		s.traps.Guard = s.traps.Guard || l.Shared
		if t.addr.Unix && !t.addr.Abstract {
			s.traps.Unlink = true
			if unix.Lstat(t.addr.Path, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFSOCK {
				t.fileDev, t.fileIno = st.Dev, st.Ino
			}
		}
		s.targets = append(s.targets, t)
	}
	s.unadopted = make([]bool, len(s.targets))
	s.sharedPort = make([][]int, len(s.targets))
	for i, t := range s.targets {
		for j, u := range s.targets {
			if i != j && !t.addr.Unix && !u.addr.Unix && t.addr.Port == u.addr.Port {
				s.sharedPort[i] = append(s.sharedPort[i], j)
			}
		}
	}
	return s, nil
}

// Pending is one worker's channel to the Supervisor, made before its fork.
type Pending struct {
	s *Supervisor
	// FD is the worker's end, to be inherited by its exec step and named
	// in its environment with Env.
	FD   int
	own  int
	slot int
	// targets are the worker's own listeners (PrepareWith); nil: the
	// Supervisor's.
	targets []target
}

// Prepare makes the channel for a worker about to be forked, of slot 0.
func (s *Supervisor) Prepare() (*Pending, error) { return s.PrepareSlot(0) }

// PrepareSlot makes the channel for a worker of slot about to be forked.
// The workers of a slot replace one another: past a few of them that
// exited and left processes running under the filter, the oldest are no
// longer served (see Pending.Started).
func (s *Supervisor) PrepareSlot(slot int) (*Pending, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("bind adoption: %w", err)
	}
	// Only the primary's end waits in the netpoller; the exec step's
	// send must not fail with EAGAIN.
	if err := unix.SetNonblock(fds[0], true); err != nil {
		unix.Close(fds[0])
		unix.Close(fds[1])
		return nil, fmt.Errorf("bind adoption: %w", err)
	}
	return &Pending{s: s, FD: fds[1], own: fds[0], slot: slot}, nil
}

// PrepareWith is PrepareSlot for a worker that has listening sockets of
// its own: its binds get fds (one per listener, in the order NewSupervisor
// was given them; each of the same address and kind as that listener's)
// instead of the listeners' sockets. fds must stay open while the worker
// may bind.
func (s *Supervisor) PrepareWith(slot int, fds []int) (*Pending, error) {
	if len(fds) != len(s.targets) {
		return nil, fmt.Errorf("bind adoption: %d sockets for %d listeners", len(fds), len(s.targets))
	}
	own := make([]target, len(s.targets))
	copy(own, s.targets)
	for i, fd := range fds {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return nil, fmt.Errorf("bind adoption: listener %s: %w", own[i].Addr, err)
		}
		own[i].FD, own[i].dev, own[i].ino = fd, st.Dev, st.Ino
	}
	pend, err := s.PrepareSlot(slot)
	if err == nil {
		pend.targets = own
	}
	return pend, err
}

// Env is the environment entry that names the worker's end, which is fd n
// in the worker.
func (p *Pending) Env(n int) string { return Env(n, p.s.traps) }

// Started is called once the fork is over, with the worker's pid, or 0 if
// it did not start. It closes FD. With a pid, the Supervisor then answers
// the worker's binds (and those of what it starts) until all of them are
// gone, the Supervisor is closed, or more than keepLeft later workers of
// the same slot exited with processes left under the filter too (the
// oldest is then stopped, with a warning); log gets the events, and
// adopted (if not nil) is called after each bind adopted.
func (p *Pending) Started(pid int, log *zap.Logger, adopted func()) {
	unix.Close(p.FD)
	s := p.s
	s.mu.Lock()
	if pid <= 0 || s.closed {
		s.mu.Unlock()
		unix.Close(p.own)
		return
	}
	s.wg.Add(1)
	s.mu.Unlock()
	if log == nil {
		log = s.log
	}
	if adopted == nil {
		adopted = func() {}
	}
	w := &worker{slot: p.slot, pid: pid, pidfd: -1, log: log, adopted: adopted, bound: make([]bool, len(s.targets)), targets: p.targets}
	if w.targets == nil {
		w.targets = s.targets
	}
	// The worker has not been reaped: its pid is still its own.
	if fd, err := unix.PidfdOpen(pid, 0); err == nil {
		w.pidfd = fd
	}
	go s.serve(p.own, w)
}

// worker is what the Supervisor knows of one worker it serves.
type worker struct {
	slot, pid int
	// pidfd is the worker's own process (not what it started), to tell
	// whether it exited; -1 if it could not be opened.
	pidfd int
	// targets are the listeners its binds get.
	targets []target
	log     *zap.Logger
	adopted func()
	// f is the notification fd, once received; stop is set when it is to
	// be closed (Close, or too many exited workers in the slot).
	f    *os.File
	stop string
	// bound[i]: a bind of this worker's adopted target i; armed: the
	// check of the listeners it left on a shared port is due.
	bound []bool
	armed bool
}

// exited reports whether the worker itself has exited (what it started
// may still run).
func (w *worker) exited() bool {
	if w.pidfd < 0 {
		return false
	}
	pfd := []unix.PollFd{{Fd: int32(w.pidfd), Events: unix.POLLIN}}
	n, err := unix.Poll(pfd, 0)
	return err == nil && n > 0 && pfd[0].Revents != 0
}

// Close stops answering: every notification fd is closed, after the
// calls pending on it were let run; a bind, listen or unlink called after
// that by a process still under the filter fails with ENOSYS. Close
// returns once nothing of the Supervisor runs. Listener fds are the
// caller's.
func (s *Supervisor) Close() {
	if s == nil {
		return
	}
	s.mu.Lock()
	s.closed = true
	for f := range s.files {
		f.Close()
	}
	for _, ws := range s.slots {
		for _, w := range ws {
			s.stopLocked(w, "closed")
		}
	}
	s.mu.Unlock()
	s.wg.Wait()
	s.warnings.flush()
	s.guards.flush()
}

// stopLocked has w's goroutine answer what is pending on its notification
// fd and close it.
func (s *Supervisor) stopLocked(w *worker, why string) {
	if w.stop == "" {
		w.stop = why
		// Wakes the goroutine waiting in the netpoller.
		w.f.SetReadDeadline(time.Now())
	}
}

// serving registers w, whose notification fd is served from now on, and
// stops the oldest exited workers of its slot past keepLeft. False when
// the Supervisor is closed.
func (s *Supervisor) serving(w *worker) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	ws := append(s.slots[w.slot], w)
	s.slots[w.slot] = ws
	var left []*worker
	for _, o := range ws {
		if o != w && o.stop == "" && o.exited() {
			left = append(left, o)
		}
	}
	for _, o := range left[:max(0, len(left)-s.keepLeft)] {
		s.stopLocked(o, fmt.Sprintf("the worker exited, and processes it started still run under the filter outside its process group: more than %d exited workers of slot %d keep such processes, the oldest is no longer served", s.keepLeft, w.slot))
	}
	return true
}

func (s *Supervisor) done(w *worker) {
	s.mu.Lock()
	ws := s.slots[w.slot]
	for i, o := range ws {
		if o == w {
			s.slots[w.slot] = append(ws[:i:i], ws[i+1:]...)
			break
		}
	}
	if len(s.slots[w.slot]) == 0 {
		delete(s.slots, w.slot)
	}
	s.mu.Unlock()
}

// track registers an fd to close on Close; false (and f closed) when
// closed already.
func (s *Supervisor) track(f *os.File) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		f.Close()
		return false
	}
	s.files[f] = struct{}{}
	return true
}

func (s *Supervisor) untrack(f *os.File) {
	s.mu.Lock()
	delete(s.files, f)
	s.mu.Unlock()
	f.Close()
}

// errGone: the worker ended, or the Supervisor was closed, before the
// handshake.
var errGone = errors.New("gone")

func (s *Supervisor) serve(sock int, w *worker) {
	defer s.wg.Done()
	defer s.closePidfd(w)
	log := w.log
	nfd, err := s.handshake(sock)
	if err != nil {
		if err != errGone {
			log.Warn("bind adoption failed", zap.String("reason", err.Error()))
		}
		return
	}
	if err := unix.SetNonblock(nfd, true); err != nil {
		unix.Close(nfd)
		log.Warn("bind adoption failed", zap.String("reason", err.Error()))
		return
	}
	w.f = os.NewFile(uintptr(nfd), "seccomp-notify")
	defer w.f.Close()
	rc, err := w.f.SyscallConn()
	if err != nil || !s.serving(w) {
		drain(nfd, s)
		return
	}
	defer s.done(w)
	if hup, err := s.answer(rc, w); !hup {
		s.stopped(rc, w, err)
	}
}

// closePidfd closes w's pidfd, if it has one still.
func (s *Supervisor) closePidfd(w *worker) {
	s.mu.Lock()
	if w.pidfd >= 0 {
		unix.Close(w.pidfd)
		w.pidfd = -1
	}
	s.mu.Unlock()
}

// answer answers every pending notification on w's notification fd (rc),
// then waits in the netpoller for more. It returns hup true when the fd
// hangs up (every process under the filter is gone), and false when asked
// to stop (the read deadline is then set) or when the wait failed (err).
func (s *Supervisor) answer(rc syscall.RawConn, w *worker) (hup bool, err error) {
	err = rc.Read(func(fd uintptr) bool {
		for {
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			if _, err := unix.Poll(pfd, 0); err == unix.EINTR {
				continue
			} else if err != nil {
				return true
			}
			switch {
			case pfd[0].Revents&unix.POLLIN != 0:
				if err := s.handle(int(fd), w); err != nil {
					s.warnings.warn(w.log, "worker bind not adopted", zap.String("reason", err.Error()))
				}
			case pfd[0].Revents&(unix.POLLHUP|unix.POLLERR|unix.POLLNVAL) != 0:
				hup = true
				return true
			default:
				return false
			}
		}
	})
	return hup, err
}

// stopped ends the serving of w's notification fd (rc), asked to stop or
// failed (err): what is pending runs as if there were no filter; later
// calls fail with ENOSYS, which it logs unless the Supervisor was closed.
func (s *Supervisor) stopped(rc syscall.RawConn, w *worker, err error) {
	rc.Control(func(fd uintptr) { drain(int(fd), s) })
	s.mu.Lock()
	why := w.stop
	s.mu.Unlock()
	switch {
	case why == "closed":
	case why != "":
		w.log.Warn("bind adoption stopped", zap.String("reason", why+"; their bind, listen and unlink calls fail with ENOSYS from now on"))
	case err != nil:
		w.log.Warn("bind adoption stopped", zap.String("reason", err.Error()+"; the bind, listen and unlink calls of the worker fail with ENOSYS from now on"))
	}
}

// stopServing closes the notification fd nfd, which no goroutine serves,
// after the calls pending on it were let run (drain).
func stopServing(nfd int, s *Supervisor) {
	drain(nfd, s)
	unix.Close(nfd)
}

// drain lets every call pending on the notification fd nfd run as if
// there were no filter, before the fd is closed (which would fail them
// with ENOSYS).
func drain(nfd int, s *Supervisor) {
	for {
		pfd := []unix.PollFd{{Fd: int32(nfd), Events: unix.POLLIN}}
		if _, err := unix.Poll(pfd, 0); err == unix.EINTR {
			continue
		} else if err != nil || pfd[0].Revents&unix.POLLIN == 0 {
			return
		}
		n, err := s.recv(nfd)
		if err == unix.ENOENT {
			continue
		} else if err != nil {
			return
		}
		s.proceed(nfd, n.ID)
	}
}

// handshake receives the notification fd the exec step sends, or the
// reason it could not.
func (s *Supervisor) handshake(sock int) (int, error) {
	f := os.NewFile(uintptr(sock), "adopt-handshake")
	if !s.track(f) {
		return -1, errGone
	}
	defer s.untrack(f)
	rc, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	buf := make([]byte, 512)
	oob := make([]byte, unix.CmsgSpace(4*4))
	var n, oobn int
	var rerr error
	if err := rc.Read(func(fd uintptr) bool {
		n, oobn, _, _, rerr = unix.Recvmsg(int(fd), buf, oob, unix.MSG_CMSG_CLOEXEC)
		return rerr != unix.EAGAIN
	}); err != nil {
		return -1, errGone
	}
	if rerr != nil {
		return -1, rerr
	}
	var fds []int
	if cmsgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
		for _, c := range cmsgs {
			if got, err := unix.ParseUnixRights(&c); err == nil {
				fds = append(fds, got...)
			}
		}
	}
	msg := string(buf[:n])
	if len(fds) == 1 && msg == "ok" {
		return fds[0], nil
	}
	for _, fd := range fds {
		unix.Close(fd)
	}
	if n == 0 {
		return -1, errGone
	}
	if rest, ok := bytes.CutPrefix(buf[:n], []byte("error: ")); ok {
		return -1, errors.New(string(rest))
	}
	return -1, fmt.Errorf("unexpected message from the exec step: %q", msg)
}

// handle answers one notification. It returns why a bind that named a
// listener was not adopted, when that is unexpected.
func (s *Supervisor) handle(nfd int, w *worker) error {
	n, err := s.recv(nfd)
	if err != nil {
		// ENOENT: the process was killed, or a signal interrupted the
		// call (which restarts it) before it was read.
		if err == unix.ENOENT {
			return nil
		}
		return fmt.Errorf("SECCOMP_IOCTL_NOTIF_RECV: %w", err)
	}
	if n.Data.Arch == auditArch {
		switch nr := uint32(n.Data.Nr); {
		case nr == unix.SYS_BIND:
			return s.bind(nfd, n, w)
		case nr == unix.SYS_LISTEN:
			s.listenCall(nfd, n, w)
			return nil
		case s.traps.Unlink && isUnlink(nr):
			return s.unlinkCall(nfd, n, w.log)
		case s.traps.Guard && (nr == unix.SYS_SHUTDOWN || nr == unix.SYS_CONNECT):
			s.guardCall(nfd, n, w)
			return nil
		}
	}
	s.proceed(nfd, n.ID)
	return nil
}

func isUnlink(nr uint32) bool {
	for _, u := range unlinkCalls {
		if nr == u {
			return true
		}
	}
	return false
}

// bind adopts a bind that names a listener, and lets any other run.
func (s *Supervisor) bind(nfd int, n *notif, w *worker) error {
	tid := int(n.Pid)
	fd := int(int32(n.Data.Args[0]))
	addrlen := int(uint32(n.Data.Args[2]))
	if addrlen < 2 || addrlen > maxSockaddr {
		s.proceed(nfd, n.ID)
		return nil
	}
	raw := make([]byte, addrlen)
	if got, err := readMem(tid, n.Data.Args[1], raw); err != nil || got < addrlen {
		gone := s.idValid(nfd, n.ID) != nil
		s.proceed(nfd, n.ID)
		if gone || err == nil {
			return nil
		}
		return fmt.Errorf("cannot read the address the worker binds: %w", err)
	}
	a, ok := parseSockaddr(raw)
	if !ok || (!a.Unix && a.Port == 0) {
		s.proceed(nfd, n.ID)
		return nil
	}
	if a.Unix && !a.Abstract && !filepath.IsAbs(a.Path) {
		cwd, err := os.Readlink("/proc/" + strconv.Itoa(tid) + "/cwd")
		if err != nil {
			s.proceed(nfd, n.ID)
			return nil
		}
		a.Path = absPath(a.Path, cwd)
	}
	i := match(w.targets, a)
	if i < 0 && a.Unix && !a.Abstract {
		i = s.matchFile(a.Path)
	}
	if i < 0 {
		s.proceed(nfd, n.ID)
		return nil
	}
	t := &w.targets[i]
	log := w.log.With(zap.String("addr", a.String()), zap.String("listener", t.Name), zap.Int("tid", tid))
	why, err := s.adopt(nfd, n, fd, t)
	switch {
	case err != nil:
		s.proceed(nfd, n.ID)
		return fmt.Errorf("bind of %s (listener %s): %w", a, t.Name, err)
	case why != "":
		// Not for us (a datagram socket on the port, say): the kernel
		// answers as it would without handoff.
		s.proceed(nfd, n.ID)
		log.Debug("worker bind left alone", zap.String("why", why))
	default:
		log.Info("worker bind adopted")
		s.adoptedBy(w, i, a)
		w.adopted()
	}
	return nil
}

// adoptedBy notes that w adopted target i with a bind of a. When other
// listeners share i's port, those w has not adopted shareGrace later (a
// program that binds the port once adopts one socket) are warned about,
// once each: nothing accepts on them.
func (s *Supervisor) adoptedBy(w *worker, i int, a Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	w.bound[i] = true
	if w.armed || len(s.sharedPort[i]) == 0 {
		return
	}
	w.armed = true
	time.AfterFunc(s.shareGrace, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.closed || w.exited() {
			return
		}
		for j := range s.targets {
			if !w.bound[j] {
				continue
			}
			for _, k := range s.sharedPort[j] {
				if w.bound[k] || s.unadopted[k] {
					continue
				}
				s.unadopted[k] = true
				t, got := s.targets[k], s.targets[j]
				w.log.Warn("listener not adopted",
					zap.String("listener", t.Name), zap.String("addr", t.Addr), zap.String("bind", a.String()), zap.String("adopted", got.Addr),
					zap.String("reason", fmt.Sprintf("the worker bound port %d once and got the listener %s: nothing accepts the connections to %s; give one --listen for the port (--listen :%d takes every address), or have the program bind each address, or take its sockets from fd 3 (LISTEN_FDS)", t.addr.Port, got.Addr, t.Addr, t.addr.Port)))
			}
		}
	})
}

// matchFile finds the unix listener whose socket file path names (through
// other spellings: symlinks, ..).
func (s *Supervisor) matchFile(path string) int {
	var st unix.Stat_t
	if unix.Lstat(path, &st) != nil {
		return -1
	}
	for i, t := range s.targets {
		if t.fileIno != 0 && st.Ino == t.fileIno && st.Dev == t.fileDev {
			return i
		}
	}
	return -1
}

// peerFD duplicates fd of the process that made the call n into this one.
// why says why there is none to look at (gone, not open).
func (s *Supervisor) peerFD(nfd int, n *notif, fd int) (dup int, why string, err error) {
	tgid, err := tgidOf(int(n.Pid))
	if err != nil {
		return -1, "gone", nil
	}
	pidfd, err := unix.PidfdOpen(tgid, 0)
	if err != nil {
		if err == unix.ESRCH {
			return -1, "gone", nil
		}
		return -1, "", fmt.Errorf("pidfd_open: %w", err)
	}
	defer unix.Close(pidfd)
	// pidfd names the process that made the call only if the call is
	// still pending: the pid may have been reused.
	if s.idValid(nfd, n.ID) != nil {
		return -1, "gone", nil
	}
	dup, err = unix.PidfdGetfd(pidfd, fd, 0)
	if err != nil {
		if err == unix.EBADF {
			return -1, "not an open fd", nil
		}
		return -1, "", fmt.Errorf("pidfd_getfd: %w", err)
	}
	return dup, "", nil
}

// is reports whether dup is t's socket.
func (t *target) is(dup int) bool {
	var st unix.Stat_t
	return unix.Fstat(dup, &st) == nil && st.Ino == t.ino && st.Dev == t.dev
}

// adopt installs t's socket at fd in the worker and answers the bind with
// success. why says why the bind is not one to adopt; err, why it could
// not be. Either way the caller lets the bind run.
func (s *Supervisor) adopt(nfd int, n *notif, fd int, t *target) (why string, err error) {
	dup, why, err := s.peerFD(nfd, n, fd)
	if dup < 0 {
		return why, err
	}
	defer unix.Close(dup)
	// A fd that is the listener already is a bind answered once and then
	// restarted by a signal before it returned: success again.
	if !t.is(dup) {
		typ, err := unix.GetsockoptInt(dup, unix.SOL_SOCKET, unix.SO_TYPE)
		if err != nil {
			return "not a socket", nil
		}
		dom, err := unix.GetsockoptInt(dup, unix.SOL_SOCKET, unix.SO_DOMAIN)
		if err != nil {
			return "", err
		}
		switch {
		case typ != unix.SOCK_STREAM:
			return "not a stream socket", nil
		case t.addr.Unix != (dom == unix.AF_UNIX):
			return "another address family", nil
		case bound(dup):
			return "bound already", nil
		}
		flags := 0
		if cloexec(int(n.Pid), fd) {
			flags = unix.O_CLOEXEC
		}
		if s.idValid(nfd, n.ID) != nil {
			return "gone", nil
		}
		if err := sameBlocking(t.FD, dup); err != nil {
			return "", err
		}
		if err := s.addfd(nfd, n.ID, t.FD, fd, flags); err != nil {
			if err == unix.ENOENT {
				return "gone", nil
			}
			return "", fmt.Errorf("SECCOMP_IOCTL_NOTIF_ADDFD: %w", err)
		}
	}
	s.respond(nfd, &notifResp{ID: n.ID})
	return "", nil
}

// listenCall answers a listen() on an adopted socket with success, leaving
// the socket as the primary made it: the backlog stays the primary's
// (a program's own choice, Python's socketserver asks for 5, would be
// every worker's). Any other listen runs.
func (s *Supervisor) listenCall(nfd int, n *notif, w *worker) {
	dup, _, _ := s.peerFD(nfd, n, int(int32(n.Data.Args[0])))
	if dup >= 0 {
		defer unix.Close(dup)
		for i := range w.targets {
			if w.targets[i].is(dup) && s.idValid(nfd, n.ID) == nil {
				s.respond(nfd, &notifResp{ID: n.ID})
				w.log.Debug("worker listen on an adopted socket: backlog kept", zap.String("listener", w.targets[i].Name), zap.Int("backlog", int(int32(n.Data.Args[1]))))
				return
			}
		}
	}
	s.proceed(nfd, n.ID)
}

// guardCall answers a shutdown() of a listener every worker shares, or a
// connect(AF_UNSPEC) on it (which some runtimes use to wake a blocked
// accept), as done, without doing it: on the one socket all workers
// accept from, either would refuse every client of every worker. Any
// other shutdown or connect runs as it is.
func (s *Supervisor) guardCall(nfd int, n *notif, w *worker) {
	call := "shutdown"
	if uint32(n.Data.Nr) == unix.SYS_CONNECT {
		call = "connect(AF_UNSPEC)"
		var fam [2]byte
		if n.Data.Args[2] < 2 {
			s.proceed(nfd, n.ID)
			return
		}
		if got, err := readMem(int(n.Pid), n.Data.Args[1], fam[:]); err != nil || got < 2 ||
			*(*uint16)(unsafe.Pointer(&fam[0])) != unix.AF_UNSPEC {
			s.proceed(nfd, n.ID)
			return
		}
	}
	dup, _, _ := s.peerFD(nfd, n, int(int32(n.Data.Args[0])))
	if dup < 0 {
		s.proceed(nfd, n.ID)
		return
	}
	defer unix.Close(dup)
	for i := range w.targets {
		t := &w.targets[i]
		if !t.Shared || !t.is(dup) {
			continue
		}
		if s.idValid(nfd, n.ID) != nil {
			return
		}
		s.respond(nfd, &notifResp{ID: n.ID})
		s.guards.warn(w.log, "worker "+call+" of a shared listener ignored", zap.String("listener", t.Name),
			zap.String("why", "every worker accepts from this socket: it would stop it for all"))
		return
	}
	s.proceed(nfd, n.ID)
}

// unlinkCall answers an unlink of a unix listener's socket file with
// success, leaving the file, and lets any other run.
func (s *Supervisor) unlinkCall(nfd int, n *notif, log *zap.Logger) error {
	tid := int(n.Pid)
	dirfd, ptr := int32(unix.AT_FDCWD), n.Data.Args[0]
	if uint32(n.Data.Nr) == unix.SYS_UNLINKAT {
		dirfd, ptr = int32(n.Data.Args[0]), n.Data.Args[1]
		if n.Data.Args[2]&unix.AT_REMOVEDIR != 0 {
			s.proceed(nfd, n.ID)
			return nil
		}
	}
	path, err := readString(tid, ptr)
	if err != nil || path == "" {
		s.proceed(nfd, n.ID)
		return nil
	}
	if !filepath.IsAbs(path) {
		base := "/proc/" + strconv.Itoa(tid) + "/cwd"
		if dirfd != unix.AT_FDCWD {
			base = "/proc/" + strconv.Itoa(tid) + "/fd/" + strconv.Itoa(int(dirfd))
		}
		dir, err := os.Readlink(base)
		if err != nil {
			s.proceed(nfd, n.ID)
			return nil
		}
		path = filepath.Join(dir, path)
	}
	i := s.matchFile(path)
	if i < 0 || s.idValid(nfd, n.ID) != nil {
		s.proceed(nfd, n.ID)
		return nil
	}
	s.respond(nfd, &notifResp{ID: n.ID})
	log.Info("worker unlink of a listener's socket file ignored", zap.Int("tid", tid), zap.String("path", path), zap.String("listener", s.targets[i].Name))
	return nil
}

func (s *Supervisor) recv(nfd int) (*notif, error) {
	buf := make([]uint64, (s.recvSize+7)/8)
	for {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(nfd), unix.SECCOMP_IOCTL_NOTIF_RECV, uintptr(unsafe.Pointer(&buf[0])))
		if errno == unix.EINTR {
			clear(buf)
			continue
		}
		if errno != 0 {
			return nil, errno
		}
		n := *(*notif)(unsafe.Pointer(&buf[0]))
		return &n, nil
	}
}

func (s *Supervisor) respond(nfd int, r *notifResp) error {
	buf := make([]uint64, (s.respSize+7)/8)
	*(*notifResp)(unsafe.Pointer(&buf[0])) = *r
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(nfd), unix.SECCOMP_IOCTL_NOTIF_SEND, uintptr(unsafe.Pointer(&buf[0])))
	if errno != 0 {
		return errno
	}
	return nil
}

// proceed lets the call run as if there were no filter.
func (s *Supervisor) proceed(nfd int, id uint64) {
	s.respond(nfd, &notifResp{ID: id, Flags: unix.SECCOMP_USER_NOTIF_FLAG_CONTINUE})
}

// idValid checks that the notification is still pending: the process that
// made the call is the one its pid names, and is still in the call.
func (s *Supervisor) idValid(nfd int, id uint64) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(nfd), unix.SECCOMP_IOCTL_NOTIF_ID_VALID, uintptr(unsafe.Pointer(&id)))
	if errno != 0 {
		return errno
	}
	return nil
}

// addfd puts a duplicate of src at fd number dst in the process of the
// notification, replacing what was there (as dup2 does).
func (s *Supervisor) addfd(nfd int, id uint64, src, dst, flags int) error {
	a := notifAddfd{ID: id, Flags: unix.SECCOMP_ADDFD_FLAG_SETFD, Srcfd: uint32(src), Newfd: uint32(dst), NewfdFlags: uint32(flags)}
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(nfd), unix.SECCOMP_IOCTL_NOTIF_ADDFD, uintptr(unsafe.Pointer(&a)))
	if errno != 0 {
		return errno
	}
	return nil
}

// readMem reads len(b) bytes at addr in the memory of task tid, or as many
// as are mapped from there.
func readMem(tid int, addr uint64, b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	n, err := unix.ProcessVMReadv(tid,
		[]unix.Iovec{{Base: &b[0], Len: uint64(len(b))}},
		[]unix.RemoteIovec{{Base: uintptr(addr), Len: len(b)}}, 0)
	if err == nil || err == unix.EFAULT || err == unix.ESRCH {
		return n, err
	}
	// process_vm_readv refused (a seccomp profile may forbid it): the
	// same access through /proc.
	f, ferr := os.Open("/proc/" + strconv.Itoa(tid) + "/mem")
	if ferr != nil {
		return 0, err
	}
	defer f.Close()
	n, ferr = f.ReadAt(b, int64(addr))
	if n > 0 {
		return n, nil
	}
	return 0, ferr
}

// readString reads a NUL-terminated path at addr in task tid's memory.
func readString(tid int, addr uint64) (string, error) {
	const pathMax = 4096
	var out []byte
	buf := make([]byte, pathMax)
	for len(out) < pathMax {
		// Up to the end of the page: the next one may not be mapped.
		chunk := buf[:min(pathMax-len(out), 4096-int((addr+uint64(len(out)))%4096))]
		n, err := readMem(tid, addr+uint64(len(out)), chunk)
		if n <= 0 {
			return "", err
		}
		if i := bytes.IndexByte(chunk[:n], 0); i >= 0 {
			return string(append(out, chunk[:i]...)), nil
		}
		out = append(out, chunk[:n]...)
	}
	return "", unix.ENAMETOOLONG
}

// tgidOf returns the process (thread group) of task tid.
func tgidOf(tid int) (int, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(tid) + "/status")
	if err != nil {
		return 0, err
	}
	if _, rest, ok := bytes.Cut(b, []byte("\nTgid:")); ok {
		line, _, _ := bytes.Cut(rest, []byte("\n"))
		return strconv.Atoi(string(bytes.TrimSpace(line)))
	}
	return 0, errors.New("no Tgid in /proc/PID/status")
}

// cloexec reports whether fd is close-on-exec in task tid, so that the
// installed socket keeps the flag the program gave its own.
func cloexec(tid, fd int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(tid) + "/fdinfo/" + strconv.Itoa(fd))
	if err != nil {
		return true
	}
	if _, rest, ok := bytes.Cut(b, []byte("flags:")); ok {
		line, _, _ := bytes.Cut(rest, []byte("\n"))
		if v, err := strconv.ParseUint(string(bytes.TrimSpace(line)), 8, 64); err == nil {
			return v&unix.O_CLOEXEC != 0
		}
	}
	return true
}

// sameBlocking gives the listener the O_NONBLOCK of the program's own
// socket: the program created it as it reads it (Go and Node non-blocking,
// Python blocking), and would have set the flag on a socket it took from
// LISTEN_FDS. The flag is on the open file description that the primary
// and every worker share.
func sameBlocking(listener, own int) error {
	want, err := unix.FcntlInt(uintptr(own), unix.F_GETFL, 0)
	if err != nil {
		return fmt.Errorf("F_GETFL: %w", err)
	}
	cur, err := unix.FcntlInt(uintptr(listener), unix.F_GETFL, 0)
	if err != nil {
		return fmt.Errorf("F_GETFL: %w", err)
	}
	if cur&unix.O_NONBLOCK == want&unix.O_NONBLOCK {
		return nil
	}
	if _, err := unix.FcntlInt(uintptr(listener), unix.F_SETFL, cur&^unix.O_NONBLOCK|want&unix.O_NONBLOCK); err != nil {
		return fmt.Errorf("F_SETFL: %w", err)
	}
	return nil
}

// bound reports whether a socket has an address already.
func bound(fd int) bool {
	var buf [maxSockaddr]byte
	l := uint32(len(buf))
	if _, _, errno := unix.Syscall(unix.SYS_GETSOCKNAME, uintptr(fd), uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&l))); errno != 0 {
		return false
	}
	a, ok := parseSockaddr(buf[:min(int(l), len(buf))])
	return ok && (a.Unix || a.Port != 0)
}
