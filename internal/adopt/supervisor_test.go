//go:build linux && (amd64 || arm64)

package adopt

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/handoff-dev/handoff/internal/testutil"
)

// The test binary plays the worker: with roleEnv=shim it is the exec step
// (Worker, then exec of itself on the same thread), with roleEnv=bind the
// program, which binds what bindsEnv lists and says what it got.
const (
	roleEnv  = "ADOPT_TEST_ROLE"
	bindsEnv = "ADOPT_TEST_BINDS"
	// probeAsEnv: "UID GID EXE" for the role probe-as.
	probeAsEnv = "ADOPT_TEST_PROBE_AS"
)

func TestMain(m *testing.M) {
	testutil.NoPtraceMain()
	switch os.Getenv(roleEnv) {
	case "shim":
		fd, traps, err := ParseEnv(os.Getenv(EnvFD))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		if fatal, err := Worker(fd, traps); err != nil {
			fmt.Fprintln(os.Stderr, "worker:", err)
			if fatal {
				os.Exit(126)
			}
		}
		var env []string
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, roleEnv+"=") && !strings.HasPrefix(kv, EnvFD+"=") {
				env = append(env, kv)
			}
		}
		env = append(env, roleEnv+"=bind")
		err = syscall.Exec(os.Args[0], os.Args, env)
		fmt.Fprintln(os.Stderr, "exec:", err)
		os.Exit(126)
	case "bind":
		for _, b := range strings.Split(os.Getenv(bindsEnv), ";") {
			fmt.Println(bindOne(b))
		}
		os.Exit(0)
	case "deny":
		// A seccomp policy that refuses seccomp(), as some container
		// runtimes' do: the probe must say so.
		if err := denySeccomp(); err != nil {
			fmt.Println("deny:", err)
			os.Exit(1)
		}
		fmt.Println("probe:", Probe())
		os.Exit(0)
	case "probe-as":
		// Probe, and ProbeWorker with the target as uid and gid
		// probeAsEnv's, started from that executable.
		var uid, gid uint32
		var exe string
		fmt.Sscanf(os.Getenv(probeAsEnv), "%d %d %s", &uid, &gid, &exe)
		fmt.Println("in-process:", Probe())
		fmt.Println("worker:", ProbeWorker(ProbeOptions{Exe: exe, Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}}}))
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// bindOne does one "KIND ADDR" of bindsEnv: KIND is tcp4, tcp6, tcp4-inherit
// (no SOCK_CLOEXEC), tcp4-nonblock, udp4, unix or unlink (of a path), and
// prints "ok ino=N cloexec=B nonblock=B" or "err ERRNO".
func bindOne(spec string) string {
	kind, addr, _ := strings.Cut(spec, " ")
	switch kind {
	case "unlink":
		if err := unix.Unlink(addr); err != nil {
			return "err " + err.Error()
		}
		return "ok"
	case "badaddr":
		// addr binds with an address that cannot be read.
		n, _ := strconv.Atoi(addr)
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return "err " + err.Error()
		}
		defer unix.Close(fd)
		efault := 0
		for range n {
			if _, _, errno := unix.Syscall(unix.SYS_BIND, uintptr(fd), 8, 16); errno == unix.EFAULT {
				efault++
			}
		}
		return fmt.Sprintf("efault=%d", efault)
	case "escape":
		// A process that outlives the worker outside its process group,
		// under the filter.
		cmd := exec.Command("sleep", "60")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err := cmd.Start(); err != nil {
			return "err " + err.Error()
		}
		return fmt.Sprintf("pid=%d", cmd.Process.Pid)
	case "sleep":
		d, _ := time.ParseDuration(addr)
		time.Sleep(d)
		return "ok"
	case "guard":
		// Binds the unix path addr (adopted: the shared listener), then
		// shuts it down and disconnects it (connect with AF_UNSPEC), as
		// some runtimes do to wake a blocked accept; then shuts down a
		// socket of its own, not connected (ENOTCONN when it runs).
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return "err " + err.Error()
		}
		if err := unix.Bind(fd, &unix.SockaddrUnix{Name: addr}); err != nil {
			return "err " + err.Error()
		}
		res := []string{"shutdown=" + errString(unix.Shutdown(fd, unix.SHUT_RDWR))}
		unspec := [16]byte{} // sa_family AF_UNSPEC
		_, _, errno := unix.Syscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&unspec[0])), uintptr(len(unspec)))
		res = append(res, "unspec="+errString(errnoErr(errno)))
		own, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return "err " + err.Error()
		}
		res = append(res, "own="+errString(unix.Shutdown(own, unix.SHUT_RDWR)))
		return strings.Join(res, " ")
	}
	domain, typ, flags := unix.AF_INET, unix.SOCK_STREAM, unix.SOCK_CLOEXEC
	var sa unix.Sockaddr
	switch kind {
	case "tcp6":
		domain = unix.AF_INET6
	case "udp4":
		typ = unix.SOCK_DGRAM
	case "tcp4-inherit":
		flags = 0
	case "tcp4-nonblock":
		flags |= unix.SOCK_NONBLOCK
	case "unix":
		domain = unix.AF_UNIX
		sa = &unix.SockaddrUnix{Name: addr}
	}
	if sa == nil {
		ap, err := net.ResolveTCPAddr("tcp", addr)
		if err != nil {
			return "err " + err.Error()
		}
		if domain == unix.AF_INET6 {
			s6 := &unix.SockaddrInet6{Port: ap.Port}
			copy(s6.Addr[:], ap.IP.To16())
			sa = s6
		} else {
			s4 := &unix.SockaddrInet4{Port: ap.Port}
			copy(s4.Addr[:], ap.IP.To4())
			sa = s4
		}
	}
	fd, err := unix.Socket(domain, typ|flags, 0)
	if err != nil {
		return "err " + err.Error()
	}
	if err := unix.Bind(fd, sa); err != nil {
		return "err " + err.Error()
	}
	// A server listens next: on an adopted socket, which listens already,
	// that must succeed too.
	if typ == unix.SOCK_STREAM {
		if err := unix.Listen(fd, 128); err != nil {
			return "err listen " + err.Error()
		}
	}
	var st unix.Stat_t
	unix.Fstat(fd, &st)
	fl, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	status, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	return fmt.Sprintf("ok ino=%d cloexec=%v nonblock=%v", st.Ino, fl&unix.FD_CLOEXEC != 0, status&unix.O_NONBLOCK != 0)
}

func errString(err error) string {
	if err == nil {
		return "ok"
	}
	return err.Error()
}

func errnoErr(e unix.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

func denySeccomp() error {
	prog := []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: 0},
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: unix.SYS_SECCOMP, Jf: 1},
		{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)},
		{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ALLOW},
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return err
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	_, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&fprog)))
	if errno != 0 {
		return errno
	}
	return nil
}

// listener makes a listening socket of the test's.
func listener(t *testing.T, network, addr string) (fd int, bound string, ino uint64) {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	rc, err := ln.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	rc.Control(func(f uintptr) { fd, err = unix.FcntlInt(f, unix.F_DUPFD_CLOEXEC, 3) })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	var st unix.Stat_t
	unix.Fstat(fd, &st)
	return fd, ln.Addr().String(), st.Ino
}

// runWorker runs the test binary as a worker of s that binds what binds
// lists, in dir, and returns one answer per bind.
func runWorker(t *testing.T, s *Supervisor, dir string, binds ...string) []string {
	t.Helper()
	pend, err := s.Prepare()
	if err != nil {
		t.Fatal(err)
	}
	dup, err := unix.FcntlInt(uintptr(pend.FD), unix.F_DUPFD_CLOEXEC, 3)
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(dup), "worker-end")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), roleEnv+"=shim", pend.Env(3), bindsEnv+"="+strings.Join(binds, ";"))
	cmd.ExtraFiles = []*os.File{f}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		pend.Started(0, nil, nil)
		t.Fatal(err)
	}
	f.Close()
	pend.Started(cmd.Process.Pid, nil, nil)
	var out bytes.Buffer
	out.ReadFrom(stdout)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("worker: %v\n%s", err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != len(binds) {
		t.Fatalf("worker answered %q to %q\n%s", lines, binds, stderr.String())
	}
	return lines
}

func newSupervisor(t *testing.T, ls ...Listener) (*Supervisor, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zap.DebugLevel)
	s, err := NewSupervisor(ls, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s, logs
}

func TestBindsAdoptedOrLeftAlone(t *testing.T) {
	if err := Probe(); err != nil {
		testutil.Need(t, "bind adoption unavailable here: %v", err)
	}
	fd, addr, ino := listener(t, "tcp", "127.0.0.1:0")
	_, port, _ := net.SplitHostPort(addr)
	// A port held by a socket that is not a listener of the primary.
	_, busy, _ := listener(t, "tcp", "127.0.0.1:0")
	s, logs := newSupervisor(t, Listener{Name: "web", Network: "tcp", Addr: addr, FD: fd})

	adopted := fmt.Sprintf("ok ino=%d cloexec=true nonblock=false", ino)
	binds := []struct{ spec, want string }{
		{"tcp4 127.0.0.1:0", "own"}, // Go's probes bind port 0: untouched
		{"tcp6 [::1]:0", "own"},
		{"tcp4 127.0.0.1:" + port, adopted},
		{"tcp6 [::]:" + port, adopted}, // Node's and Go's default
		{"tcp4 0.0.0.0:" + port, adopted},
		{"tcp4-inherit 127.0.0.1:" + port, fmt.Sprintf("ok ino=%d cloexec=false nonblock=false", ino)},
		// The socket takes the program's O_NONBLOCK, for all.
		{"tcp4-nonblock 0.0.0.0:" + port, fmt.Sprintf("ok ino=%d cloexec=true nonblock=true", ino)},
		{"udp4 127.0.0.1:" + port, "own"}, // a datagram socket on the port is not replaced
		{"tcp4 " + busy, "err address already in use"},
	}
	var specs []string
	for _, b := range binds {
		specs = append(specs, b.spec)
	}
	got := runWorker(t, s, "", specs...)
	for i, b := range binds {
		switch {
		case b.want == "own":
			if !strings.HasPrefix(got[i], "ok ") || strings.Contains(got[i], fmt.Sprintf("ino=%d ", ino)) {
				t.Errorf("%s: %q, want a socket of its own", b.spec, got[i])
			}
		case got[i] != b.want:
			t.Errorf("%s: %q, want %q", b.spec, got[i], b.want)
		}
	}
	if n := len(logs.FilterMessage("worker bind adopted").All()); n != 5 {
		t.Errorf("%d \"worker bind adopted\" events, want 5: %v", n, logs.All())
	}
	if fl, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); fl&unix.O_NONBLOCK == 0 {
		t.Error("the listener is blocking after the last adopted bind, of a non-blocking socket")
	}
	// The worker's listen(fd, 128) on the adopted socket left the
	// listener's backlog as the primary made it (Go: somaxconn).
	info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		t.Fatal(err)
	}
	if info.Sacked == 128 || info.Sacked == 0 {
		t.Errorf("the listener's backlog is %d after the worker's listen(fd, 128)", info.Sacked)
	}
	waitUntracked(t, s)
}

// A listener every worker shares: a worker's shutdown() of it and its
// connect(AF_UNSPEC) on it succeed without effect (it still takes
// connections after), and are logged; a shutdown of another socket runs.
// The same listener not shared is left to the worker's calls.
func TestSharedListenerGuarded(t *testing.T) {
	if err := Probe(); err != nil {
		testutil.Need(t, "bind adoption unavailable here: %v", err)
	}
	for _, shared := range []bool{true, false} {
		dir := t.TempDir()
		path := filepath.Join(dir, "app.sock")
		fd, _, _ := listener(t, "unix", path)
		s, logs := newSupervisor(t, Listener{Name: "sock", Network: "unix", Addr: path, FD: fd, Shared: shared})
		got := runWorker(t, s, dir, "guard "+path)[0]
		c, dialErr := net.DialTimeout("unix", path, time.Second)
		if c != nil {
			c.Close()
		}
		ignored := len(logs.FilterMessageSnippet("of a shared listener ignored").All())
		if shared {
			if got != "shutdown=ok unspec=ok own=transport endpoint is not connected" {
				t.Errorf("shared: the worker got %q", got)
			}
			if dialErr != nil {
				t.Errorf("shared: the listener refuses connections after the worker's shutdown: %v", dialErr)
			}
			if ignored == 0 {
				t.Errorf("shared: no \"... of a shared listener ignored\" logged")
			}
		} else {
			if !strings.HasPrefix(got, "shutdown=ok") || dialErr == nil || ignored != 0 {
				t.Errorf("not shared: the worker got %q, a connection after: %v, %d logged; want its shutdown to run", got, dialErr, ignored)
			}
		}
		waitUntracked(t, s)
	}
}

// The unix listener's path, given relative to the worker's directory or
// not, is adopted; the worker's unlink of it succeeds and leaves the file,
// which still reaches the listener; other unlinks run.
func TestUnixBindAndUnlink(t *testing.T) {
	if err := Probe(); err != nil {
		testutil.Need(t, "bind adoption unavailable here: %v", err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "app.sock")
	fd, _, ino := listener(t, "unix", path)
	other := filepath.Join(dir, "other")
	if err := os.WriteFile(other, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s, logs := newSupervisor(t, Listener{Name: "sock", Network: "unix", Addr: path, FD: fd})
	got := runWorker(t, s, dir, "unlink app.sock", "unix app.sock", "unix "+path, "unlink "+path, "unlink other")
	adopted := fmt.Sprintf("ok ino=%d cloexec=true nonblock=false", ino)
	want := []string{"ok", adopted, adopted, "ok", "ok"}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("answer %d: %q, want %q", i, got[i], want[i])
		}
	}
	if _, err := os.Lstat(path); err != nil {
		t.Errorf("the listener's socket file is gone: %v", err)
	}
	if _, err := os.Lstat(other); !os.IsNotExist(err) {
		t.Errorf("another file was not removed: %v", err)
	}
	if n := len(logs.FilterMessage("worker unlink of a listener's socket file ignored").All()); n != 2 {
		t.Errorf("%d unlinks logged as ignored, want 2", n)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		t.Fatalf("the socket file no longer reaches the listener: %v", err)
	}
	c.Close()
	waitUntracked(t, s)
}

// A worker that exits leaves nothing open in the Supervisor.
func waitUntracked(t *testing.T, s *Supervisor) {
	t.Helper()
	end := time.Now().Add(5 * time.Second)
	for {
		s.mu.Lock()
		n := len(s.files)
		s.mu.Unlock()
		if n == 0 {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("%d fds still open 5s after the worker exited", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A storm of binds whose address cannot be read logs a bounded number of
// warnings: the first, then how many followed in each interval.
func TestBadBindsRateLimited(t *testing.T) {
	if err := Probe(); err != nil {
		t.Skipf("bind adoption unavailable here: %v", err)
	}
	fd, addr, _ := listener(t, "tcp", "127.0.0.1:0")
	s, logs := newSupervisor(t, Listener{Network: "tcp", Addr: addr, FD: fd})
	s.warnings.every = time.Second
	const n = 2000
	start := time.Now()
	if got := runWorker(t, s, "", fmt.Sprintf("badaddr %d", n)); got[0] != fmt.Sprintf("efault=%d", n) {
		t.Fatalf("the worker's binds: %q, want each to fail with EFAULT as without the filter", got)
	}
	storm := time.Since(start)
	// The count of the last interval comes once it is over.
	count := func() (lines, binds int) {
		for _, e := range logs.FilterMessage("worker bind not adopted").All() {
			lines++
			binds++
			if n, ok := e.ContextMap()["suppressed"].(int64); ok {
				binds += int(n) - 1
			}
		}
		return
	}
	end := time.Now().Add(10 * time.Second)
	for {
		if _, b := count(); b == n || time.Now().After(end) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	lines, binds := count()
	t.Logf("%d bad binds in %s: %d warning lines", n, storm, lines)
	if binds != n {
		t.Errorf("the warnings account for %d binds, want %d: %v", binds, n, logs.All())
	}
	if max := 2 + int(storm/s.warnings.every); lines > max {
		t.Errorf("%d warning lines for %d bad binds in %s, want at most %d", lines, n, storm, max)
	}
	if first := logs.FilterMessage("worker bind not adopted").All()[0].ContextMap()["reason"]; !strings.Contains(fmt.Sprint(first), "bad address") {
		t.Errorf("the first warning says %q", first)
	}
}

// Workers that exit and leave processes running under the filter (outside
// their process group, which the pool kills) keep their notification fd
// served, but only the latest keepLeft of a slot: the oldest is stopped,
// with one warning each.
func TestLeftProcessesBounded(t *testing.T) {
	if err := Probe(); err != nil {
		t.Skipf("bind adoption unavailable here: %v", err)
	}
	fd, addr, _ := listener(t, "tcp", "127.0.0.1:0")
	s, logs := newSupervisor(t, Listener{Network: "tcp", Addr: addr, FD: fd})
	s.keepLeft = 2
	served := func() int {
		s.mu.Lock()
		defer s.mu.Unlock()
		return len(s.slots[0])
	}
	const workers = 6
	for i := range workers {
		got := runWorker(t, s, "", "escape")
		pid, err := strconv.Atoi(strings.TrimPrefix(got[0], "pid="))
		if err != nil {
			t.Fatalf("worker %d: %q", i, got)
		}
		t.Cleanup(func() { unix.Kill(pid, unix.SIGKILL) })
		if n := served(); n > s.keepLeft+1 {
			t.Errorf("after worker %d: %d notification fds served in the slot, want at most %d", i, n, s.keepLeft+1)
		}
	}
	// The last worker's own start stopped one more.
	want := workers - 1 - s.keepLeft
	end := time.Now().Add(5 * time.Second)
	for logs.FilterMessage("bind adoption stopped").Len() < want && time.Now().Before(end) {
		time.Sleep(5 * time.Millisecond)
	}
	stopped := logs.FilterMessage("bind adoption stopped").All()
	if len(stopped) != want {
		t.Fatalf("%d \"bind adoption stopped\", want %d: %v", len(stopped), want, logs.All())
	}
	for _, e := range stopped {
		if r := fmt.Sprint(e.ContextMap()["reason"]); !strings.Contains(r, "more than 2 exited workers of slot 0") || !strings.Contains(r, "ENOSYS") {
			t.Errorf("reason %q", r)
		}
	}
	// The last worker's is stopped at the next start in the slot.
	if n := served(); n != s.keepLeft+1 {
		t.Errorf("%d notification fds served in the slot once its workers exited, want %d", n, s.keepLeft+1)
	}
}

// A notification fd that stops being served first lets the calls pending
// on it run, as if there were no filter (a plain close would fail them
// with ENOSYS); a call made after that fails with ENOSYS.
func TestStopLetsPendingCallsRun(t *testing.T) {
	if err := Probe(); err != nil {
		t.Skipf("bind adoption unavailable here: %v", err)
	}
	fd, addr, _ := listener(t, "tcp", "127.0.0.1:0")
	s, _ := newSupervisor(t, Listener{Network: "tcp", Addr: addr, FD: fd})
	nfds := make(chan int, 1)
	next := make(chan struct{})
	binds := make(chan error, 2)
	go func() {
		runtime.LockOSThread() // never unlocked: the filter is this thread's
		nfd, err := install(Traps{})
		nfds <- nfd
		if err != nil {
			binds <- err
			return
		}
		for range 2 {
			sock, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				binds <- err
				continue
			}
			binds <- unix.Bind(sock, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}})
			unix.Close(sock)
			<-next
		}
	}()
	nfd := <-nfds
	if nfd < 0 {
		t.Fatal(<-binds)
	}
	pfd := []unix.PollFd{{Fd: int32(nfd), Events: unix.POLLIN}}
	if n, err := unix.Poll(pfd, 5000); n != 1 || err != nil {
		t.Fatalf("no bind pending: %v", err)
	}
	stopServing(nfd, s)
	if err := <-binds; err != nil {
		t.Errorf("the bind pending when the fd was closed: %v, want it to run", err)
	}
	close(next)
	if err := <-binds; err != unix.ENOSYS {
		t.Errorf("a bind after the fd was closed: %v, want ENOSYS", err)
	}
}

// Closing the Supervisor ends its goroutines and fds at once, even with a
// worker still running.
func TestCloseWithWorkerRunning(t *testing.T) {
	if err := Probe(); err != nil {
		testutil.Need(t, "bind adoption unavailable here: %v", err)
	}
	fd, addr, _ := listener(t, "tcp", "127.0.0.1:0")
	s, _ := newSupervisor(t, Listener{Network: "tcp", Addr: addr, FD: fd})
	pend, err := s.Prepare()
	if err != nil {
		t.Fatal(err)
	}
	dup, _ := unix.FcntlInt(uintptr(pend.FD), unix.F_DUPFD_CLOEXEC, 3)
	f := os.NewFile(uintptr(dup), "worker-end")
	// A worker that never sends: a plain sleep, holding the other end.
	cmd := exec.Command("sleep", "30")
	cmd.ExtraFiles = []*os.File{f}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	defer cmd.Process.Kill()
	pend.Started(cmd.Process.Pid, nil, nil)
	done := make(chan struct{})
	go func() { s.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close blocked on a live worker")
	}
}

// Under a seccomp policy that refuses seccomp(), the probe says so.
func TestProbeRefused(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), roleEnv+"=deny")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !strings.Contains(string(out), "probe: seccomp() refused") || !strings.Contains(string(out), "operation not permitted") {
		t.Fatalf("probe under a policy refusing seccomp(): %s", out)
	}
}

// ProbeWorker runs its target as the workers run: in a process of its own,
// as another user if asked. A root primary without CAP_SYS_PTRACE (Docker's
// default capabilities) may not read the memory of workers of another
// user, which the in-process probe cannot see: ProbeWorker says so, and
// names the capability.
func TestProbeWorkerAsAnotherUser(t *testing.T) {
	if err := Probe(); err != nil {
		t.Skipf("bind adoption unavailable here: %v", err)
	}
	if err := ProbeWorker(ProbeOptions{}); err != nil {
		t.Fatalf("ProbeWorker as this user: %v", err)
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("under CI this test runs as root")
		}
		t.Skip("switching users needs root")
	}
	// The target runs this test binary as nobody, who must reach it.
	dir, err := os.MkdirTemp("", "adopt-probe-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	exe := filepath.Join(dir, "adopt.test")
	b, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(exe, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	const nobody = 65534
	for _, tc := range []struct {
		name   string
		wrap   []string
		worker []string // what ProbeWorker's answer has
	}{
		{"root", nil, []string{"worker: <nil>"}},
		{"root without CAP_SYS_PTRACE", []string{testutil.EnvNoPtrace + "=1"},
			[]string{"worker: the primary may not read the memory of a worker running as uid 65534", "operation not permitted", "CAP_SYS_PTRACE"}},
	} {
		argv := []string{exe, "-test.run=^$"}
		if tc.wrap != nil {
			argv = append([]string{exe}, argv...)
		}
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Env = append(os.Environ(), append(tc.wrap, roleEnv+"=probe-as", fmt.Sprintf("%s=%d %d %s", probeAsEnv, nobody, nobody, exe))...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", tc.name, err, out)
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if len(lines) != 2 || lines[0] != "in-process: <nil>" {
			t.Fatalf("%s: %q, want the in-process probe to pass", tc.name, lines)
		}
		for _, want := range tc.worker {
			if !strings.Contains(lines[1], want) {
				t.Errorf("%s: %q, want %q in it", tc.name, lines[1], want)
			}
		}
	}
}

func TestProbeTime(t *testing.T) {
	if err := Probe(); err != nil {
		testutil.Need(t, "bind adoption unavailable here: %v", err)
	}
	const n = 20
	start := time.Now()
	for range n {
		if err := Probe(); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("Probe: %s each", time.Since(start)/n)
	start = time.Now()
	for range n {
		if err := ProbeWorker(ProbeOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("ProbeWorker: %s each", time.Since(start)/n)
}

// What the filter adds to every system call of a worker: getpid on a
// thread under the filter (which ends with the benchmark) against one
// without.
func BenchmarkSyscall(b *testing.B) {
	if err := Probe(); err != nil {
		b.Skipf("bind adoption unavailable here: %v", err)
	}
	for _, filtered := range []bool{false, true} {
		name := "plain"
		if filtered {
			name = "filtered"
		}
		b.Run(name, func(b *testing.B) {
			done := make(chan error, 1)
			go func() {
				// Never unlocked: a filtered thread ends with its goroutine.
				runtime.LockOSThread()
				if filtered {
					nfd, err := install(Traps{})
					if err != nil {
						done <- err
						return
					}
					defer unix.Close(nfd)
				} else {
					defer runtime.UnlockOSThread()
				}
				b.ResetTimer()
				for range b.N {
					unix.Getpid()
				}
				b.StopTimer()
				done <- nil
			}()
			if err := <-done; err != nil {
				b.Fatal(err)
			}
		})
	}
}

// What a bind costs under the filter, answered by a Supervisor in this
// process: a bind to port 0 (let run, as Go's start-up probes) and a bind
// of a listener's address (adopted), against a bind to port 0 with no
// filter.
func BenchmarkBind(b *testing.B) {
	if err := Probe(); err != nil {
		b.Skipf("bind adoption unavailable here: %v", err)
	}
	lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(lfd)
	loopback := [4]byte{127, 0, 0, 1}
	unix.Bind(lfd, &unix.SockaddrInet4{Addr: loopback})
	unix.Listen(lfd, 16)
	sa, _ := unix.Getsockname(lfd)
	port := sa.(*unix.SockaddrInet4).Port
	s, err := NewSupervisor([]Listener{{Network: "tcp", Addr: "127.0.0.1:" + strconv.Itoa(port), FD: lfd}}, nil)
	if err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		filtered bool
		port     int
	}{{"plain, port 0", false, 0}, {"filtered, port 0 (let run)", true, 0}, {"filtered, listener (adopted)", true, port}} {
		b.Run(tc.name, func(b *testing.B) {
			nfds := make(chan int, 1)
			done := make(chan error, 1)
			go func() {
				runtime.LockOSThread() // never unlocked when filtered
				if !tc.filtered {
					defer runtime.UnlockOSThread()
					nfds <- -1
				} else {
					nfd, err := install(Traps{})
					if err != nil {
						nfds <- -1
						done <- err
						return
					}
					nfds <- nfd
				}
				b.ResetTimer()
				for range b.N {
					fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
					if err != nil {
						done <- err
						return
					}
					if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: loopback, Port: tc.port}); err != nil {
						done <- err
						return
					}
					unix.Close(fd)
				}
				b.StopTimer()
				done <- nil
			}()
			nfd := <-nfds
			if nfd >= 0 {
				defer unix.Close(nfd)
				go func() {
					for {
						pfd := []unix.PollFd{{Fd: int32(nfd), Events: unix.POLLIN}}
						if _, err := unix.Poll(pfd, -1); err == unix.EINTR {
							continue
						} else if err != nil || pfd[0].Revents&unix.POLLIN == 0 {
							return
						}
						s.handle(nfd, &worker{pidfd: -1, log: s.log, adopted: func() {}, bound: make([]bool, 1), targets: s.targets})
					}
				}()
			}
			if err := <-done; err != nil {
				b.Fatal(err)
			}
		})
	}
}
