//go:build linux

package workerpool

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/internal/testutil"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/handoff-dev/handoff/internal/shim"
)

// The test binary is also the worker of the tests below: OSLauncher starts
// it as the shim (which execs the same binary again) and TestMain, seeing
// envChild, acts as the worker instead of running tests.

const envChild = "WORKERPOOL_TEST_CHILD"

// startFds is the list of fds open when TestMain began, read before
// anything else could open one.
var startFds []fdInfo

type fdInfo struct {
	Fd     int    `json:"fd"`
	Target string `json:"target"`
}

func TestMain(m *testing.M) {
	startFds = openFds()
	shim.Main()
	if mode := os.Getenv(envChild); mode == "launcher" {
		os.Exit(launcherMain())
	} else if mode != "" {
		os.Exit(childMain(mode))
	}
	goleak.VerifyTestMain(m)
}

// openFds lists /proc/self/fd with raw system calls: os.ReadDir would set
// up the runtime's poller (an epoll fd and an eventfd) and show them.
func openFds() []fdInfo {
	dir, err := unix.Open("/proc/self/fd", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	defer unix.Close(dir)
	var names []string
	buf := make([]byte, 8192)
	for {
		n, err := unix.Getdents(dir, buf)
		if err != nil || n <= 0 {
			break
		}
		_, _, names = unix.ParseDirent(buf[:n], -1, names)
	}
	var out []fdInfo
	for _, name := range names {
		fd, err := strconv.Atoi(name)
		if err != nil || fd == dir {
			continue
		}
		target, _ := os.Readlink("/proc/self/fd/" + name)
		out = append(out, fdInfo{fd, target})
	}
	return out
}

// report is what a worker tells the test about itself.
type report struct {
	Pid        int               `json:"pid"`
	Args       []string          `json:"args"`
	Env        map[string]string `json:"env"`
	Fds        []fdInfo          `json:"fds"`
	Grandchild int               `json:"grandchild"`
}

// childMain is the worker. Its behaviour is set by variables:
//
//	WP_REPORT=path      write a report there (before READY=1)
//	WP_GRANDCHILD=1     start a grandchild that sleeps, pid in the report
//	WP_STDERR=text      write text to stderr
//	WP_NOTIFY=1         send READY=1 to NOTIFY_SOCKET
//	WP_CHANNEL=1        say ready on the message channel and echo what comes
//	WP_EXIT=n           exit with n; otherwise sleep until killed
func childMain(string) int {
	if path := os.Getenv("WP_REPORT"); path != "" {
		r := report{Pid: os.Getpid(), Args: os.Args, Env: map[string]string{}, Fds: startFds}
		for _, kv := range os.Environ() {
			k, v, _ := strings.Cut(kv, "=")
			r.Env[k] = v
		}
		if os.Getenv("WP_GRANDCHILD") != "" {
			self, _ := os.Executable()
			cmd := exec.Command(self)
			cmd.Env = []string{envChild + "=sleep", "GORACE=atexit_sleep_ms=0"}
			if err := cmd.Start(); err != nil {
				fmt.Fprintln(os.Stderr, "grandchild:", err)
				return 20
			}
			r.Grandchild = cmd.Process.Pid
		}
		b, _ := json.Marshal(r)
		if err := os.WriteFile(path+".tmp", b, 0o600); err != nil || os.Rename(path+".tmp", path) != nil {
			return 21
		}
	}
	if s := os.Getenv("WP_STDERR"); s != "" {
		os.Stderr.WriteString(s)
	}
	if os.Getenv("WP_NOTIFY") != "" {
		c, err := net.Dial("unixgram", os.Getenv("NOTIFY_SOCKET"))
		if err != nil {
			return 22
		}
		c.Write([]byte("STATUS=warming up\n"))
		c.Write([]byte("READY=1\nSTATUS=serving"))
		c.Close()
	}
	if os.Getenv("WP_CHANNEL") != "" {
		return channelChild()
	}
	if s := os.Getenv("WP_EXIT"); s != "" {
		n, _ := strconv.Atoi(s)
		return n
	}
	time.Sleep(time.Hour)
	return 0
}

type procEnv struct {
	l      *OSLauncher
	fd     int // the launcher's duplicate of the listener
	ln     net.Listener
	stderr *testutil.SyncBuffer
	dir    string // for reports
	exe    string
}

func newProcEnv(t *testing.T) *procEnv {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	fd := dupListener(t, ln)
	t.Cleanup(func() { unix.Close(fd) })
	// Short: the notify socket path must fit in a sockaddr_un.
	notifyDir, err := os.MkdirTemp("", "wp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(notifyDir) })
	stdout, err := os.Create(filepath.Join(t.TempDir(), "stdout"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdout.Close() })
	e := &procEnv{fd: fd, ln: ln, stderr: &testutil.SyncBuffer{}, dir: t.TempDir(), exe: exe}
	e.l = &OSLauncher{
		Listeners: []int{fd},
		Names:     []string{"web"},
		Ready:     ReadyNotify,
		NotifyDir: notifyDir,
		Stdout:    stdout,
		Stderr:    e.stderr,
		Self:      exe,
	}
	return e
}

// dupListener takes a raw fd of ln the way the primary does (runtime's
// rawFd): never through os.File.Fd.
func dupListener(t *testing.T, ln net.Listener) int {
	t.Helper()
	rc, err := ln.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	fd, ferr := -1, error(nil)
	if err := rc.Control(func(s uintptr) { fd, ferr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 3) }); err != nil || ferr != nil {
		t.Fatal(err, ferr)
	}
	return fd
}

func (e *procEnv) spec(gen int, vars ...string) *Spec {
	// The race detector's runtime otherwise sleeps 1s in every exit.
	env := append([]string{envChild + "=worker", "PATH=" + os.Getenv("PATH"), "GORACE=atexit_sleep_ms=0"}, vars...)
	return &Spec{Path: e.exe, Args: []string{e.exe, "-test.run=^$"}, Env: env, Generation: gen}
}

func (e *procEnv) launch(t *testing.T, slot int, spec *Spec) Process {
	t.Helper()
	p, err := e.l.Launch(slot, spec, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Kill()
		<-p.Done()
	})
	return p
}

func waitChan(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(waitLimit):
		t.Fatalf("timed out waiting for %s", what)
	}
}

func readReport(t *testing.T, path string) report {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var r report
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	return r
}

// runtimeFd reports whether an fd is one the Go runtime of the worker may
// have opened itself before TestMain: the poller, or a cgroup file it keeps
// open to follow the CPU limit.
func runtimeFd(f fdInfo) bool {
	return f.Target == "anon_inode:[eventpoll]" || f.Target == "anon_inode:[eventfd]" ||
		strings.HasPrefix(f.Target, "/sys/fs/cgroup/")
}

func TestLaunchWorkerContract(t *testing.T) {
	e := newProcEnv(t)
	path := filepath.Join(e.dir, "report.json")
	spec := e.spec(9, "WP_REPORT="+path, "WP_NOTIFY=1")
	spec.Args = []string{"my-worker", "-test.run=^$", "two words"}
	p := e.launch(t, 2, spec)
	waitChan(t, p.Ready(), "READY=1")
	r := readReport(t, path)
	if r.Pid != p.Pid() {
		t.Fatalf("worker pid %d, launcher says %d", r.Pid, p.Pid())
	}
	if !slices.Equal(r.Args, spec.Args) {
		t.Errorf("worker argv %q, want %q", r.Args, spec.Args)
	}
	for k, want := range map[string]string{
		"LISTEN_FDS":         "1",
		"LISTEN_PID":         strconv.Itoa(p.Pid()),
		"LISTEN_FDNAMES":     "web",
		"HANDOFF_WORKER":     "2",
		"HANDOFF_GENERATION": "9",
	} {
		if got, ok := r.Env[k]; !ok || got != want {
			t.Errorf("%s=%q, want %q", k, got, want)
		}
	}
	if ns := r.Env["NOTIFY_SOCKET"]; filepath.Dir(ns) != e.l.NotifyDir {
		t.Errorf("NOTIFY_SOCKET=%q, not in %s", ns, e.l.NotifyDir)
	}
	if v, ok := r.Env[shim.EnvMarker]; ok {
		t.Errorf("%s=%q reached the worker", shim.EnvMarker, v)
	}
	var fds []int
	var ignored []string
	for _, f := range r.Fds {
		if f.Fd > 3 && runtimeFd(f) {
			ignored = append(ignored, fmt.Sprintf("%d→%s", f.Fd, f.Target))
			continue
		}
		fds = append(fds, f.Fd)
	}
	t.Logf("worker fds at start: %+v (ignored as the Go runtime's: %v)", r.Fds, ignored)
	if fmt.Sprint(fds) != "[0 1 2 3]" {
		t.Fatalf("worker fds %+v, want exactly 0 1 2 3", r.Fds)
	}
	if tgt := r.Fds[3].Target; !strings.HasPrefix(tgt, "socket:") {
		t.Fatalf("fd 3 is %s, not the listener", tgt)
	}
	// The listener is the primary's socket itself.
	var st unix.Stat_t
	if err := unix.Fstat(e.fd, &st); err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("socket:[%d]", st.Ino); r.Fds[3].Target != want {
		t.Fatalf("fd 3 is %s, want %s", r.Fds[3].Target, want)
	}
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitChan(t, p.Done(), "exit")
	if x := p.Exit(); x.Status != "signal: terminated" || x.Code != -1 || x.Uptime <= 0 {
		t.Fatalf("exit %+v", x)
	}
	if err := p.Signal(syscall.SIGTERM); !errors.Is(err, os.ErrProcessDone) {
		t.Fatalf("Signal after exit: %v", err)
	}
	// The notify socket is gone with the worker.
	if names, _ := os.ReadDir(e.l.NotifyDir); len(names) != 0 {
		t.Fatalf("left in the notify dir: %v", names)
	}
}

// launcherMain is a primary of its own (envChild=launcher): once told to
// on stdin, an OSLauncher with the default Self launches the worker
// WP_WORKER (the test binary's worker mode) and says whether it became
// ready.
func launcherMain() int {
	fmt.Println("waiting")
	if _, err := fmt.Scanln(); err != nil {
		fmt.Println("stdin:", err)
		return 2
	}
	dir, err := os.MkdirTemp("", "wp")
	if err != nil {
		fmt.Println(err)
		return 2
	}
	defer os.RemoveAll(dir)
	l := &OSLauncher{NotifyDir: dir, Ready: ReadyNotify, Stdout: os.Stdout, Stderr: os.Stdout}
	w := os.Getenv("WP_WORKER")
	p, err := l.Launch(0, &Spec{Path: w, Args: []string{w, "-test.run=^$"},
		Env: []string{envChild + "=worker", "WP_NOTIFY=1", "GORACE=atexit_sleep_ms=0"}}, nil)
	if err != nil {
		fmt.Println("launch:", err)
		return 3
	}
	defer func() { p.Kill(); <-p.Done() }()
	select {
	case <-p.Ready():
		fmt.Println("worker ready")
		return 0
	case <-p.Done():
		fmt.Println("worker exited:", p.Exit().Status)
	case <-time.After(20 * time.Second):
		fmt.Println("worker not ready in 20s")
	}
	return 1
}

// With Self left empty the launcher forks /proc/self/exe, the primary's
// own running executable: its workers still start after its file on disk
// was replaced (by a script that fails) since it started, as a deploy of
// handoff itself replaces it.
func TestLaunchDefaultSelfIsProcSelfExe(t *testing.T) {
	e := newProcEnv(t)
	dir := t.TempDir()
	primary, worker := filepath.Join(dir, "primary"), filepath.Join(dir, "worker")
	b, err := os.ReadFile(e.exe)
	if err != nil {
		t.Fatal(err)
	}
	for _, dst := range []string{primary, worker} {
		if err := os.WriteFile(dst, b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// A fork elsewhere in this process may still hold a copy open for
	// writing for a moment (ETXTBSY): start again.
	var (
		cmd   *exec.Cmd
		stdin io.WriteCloser
		out   = &testutil.SyncBuffer{}
	)
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		cmd = exec.Command(primary, "-test.run=^$")
		cmd.Env = []string{envChild + "=launcher", "WP_WORKER=" + worker, "GORACE=atexit_sleep_ms=0", "PATH=" + os.Getenv("PATH")}
		cmd.Stdout, cmd.Stderr = out, out
		if stdin, err = cmd.StdinPipe(); err != nil {
			t.Fatal(err)
		}
		err = cmd.Start()
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.ETXTBSY) || time.Now().After(end) {
			t.Fatal(err)
		}
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	exited := false
	t.Cleanup(func() {
		if !exited {
			cmd.Process.Kill()
			<-done
		}
	})
	for end := time.Now().Add(20 * time.Second); !strings.Contains(out.String(), "waiting"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("the launcher process did not start within 20s: %q", out.String())
		}
	}
	// The primary's file is replaced by one that fails as a shim.
	replaced := filepath.Join(dir, "primary.new")
	if err := os.WriteFile(replaced, []byte("#!/bin/sh\necho not the running primary >&2\nexit 7\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(replaced, primary); err != nil {
		t.Fatal(err)
	}
	stdin.Write([]byte("\n"))
	select {
	case err := <-done:
		exited = true
		if err != nil || !strings.Contains(out.String(), "worker ready") {
			t.Fatalf("the launcher: %v, output %q; want its worker ready", err, out.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the launcher did not finish within 30s: %q", out.String())
	}
}

func TestReadyDelay(t *testing.T) {
	e := newProcEnv(t)
	e.l.Ready, e.l.ReadyDelay = ReadyDelay, 80*time.Millisecond
	begin := time.Now()
	p := e.launch(t, 0, e.spec(1))
	waitChan(t, p.Ready(), "ready after the delay")
	if took := time.Since(begin); took < 80*time.Millisecond {
		t.Fatalf("ready after %s", took)
	}
	select {
	case <-p.Done():
		t.Fatal("worker exited")
	default:
	}
}

func TestReadyDelayTakesEarlyNotify(t *testing.T) {
	e := newProcEnv(t)
	e.l.Ready, e.l.ReadyDelay = ReadyDelay, time.Hour
	p := e.launch(t, 0, e.spec(1, "WP_NOTIFY=1"))
	waitChan(t, p.Ready(), "READY=1 in delay mode")
}

func TestReadyDelayNotReachedWhenWorkerExits(t *testing.T) {
	e := newProcEnv(t)
	e.l.Ready, e.l.ReadyDelay = ReadyDelay, 10*time.Second
	p := e.launch(t, 0, e.spec(1, "WP_EXIT=0"))
	waitChan(t, p.Done(), "exit")
	select {
	case <-p.Ready():
		t.Fatal("ready although it exited")
	default:
	}
}

func TestStderrLinesAndExitCode(t *testing.T) {
	e := newProcEnv(t)
	p := e.launch(t, 0, e.spec(1, "WP_STDERR=first line\nsecond line\nno newline at the end", "WP_EXIT=3"))
	waitChan(t, p.Done(), "exit")
	x := p.Exit()
	if x.Status != "exit status 3" || x.Code != 3 {
		t.Fatalf("exit %+v", x)
	}
	if want := "first line\nsecond line\nno newline at the end"; x.StderrTail != want {
		t.Fatalf("tail %q, want %q", x.StderrTail, want)
	}
	if got, want := e.stderr.String(), "first line\nsecond line\nno newline at the end\n"; got != want {
		t.Fatalf("stderr %q, want %q", got, want)
	}
	select {
	case <-p.Ready():
		t.Fatal("ready without READY=1")
	default:
	}
}

func TestStderrTailKeepsLastLines(t *testing.T) {
	e := newProcEnv(t)
	var b strings.Builder
	for i := 0; i < 500; i++ {
		fmt.Fprintf(&b, "line %03d\n", i)
	}
	p := e.launch(t, 0, e.spec(1, "WP_STDERR="+b.String(), "WP_EXIT=1"))
	waitChan(t, p.Done(), "exit")
	tail := p.Exit().StderrTail
	if len(tail) > stderrTailBytes || !strings.HasPrefix(tail, "line ") || !strings.HasSuffix(tail, "line 499") {
		t.Fatalf("tail of %d bytes: %q...%q", len(tail), tail[:20], tail[len(tail)-20:])
	}
	if e.stderr.String() != b.String() {
		t.Fatal("stderr writer did not get every line")
	}
}

func TestExitBySignal(t *testing.T) {
	e := newProcEnv(t)
	p := e.launch(t, 0, e.spec(1, "WP_NOTIFY=1"))
	waitChan(t, p.Ready(), "READY=1")
	p.Kill()
	waitChan(t, p.Done(), "exit")
	if x := p.Exit(); x.Status != "signal: killed" || x.Code != -1 {
		t.Fatalf("exit %+v", x)
	}
	p.Kill() // after the reap: a no-op
}

func TestShimCannotExec(t *testing.T) {
	e := newProcEnv(t)
	s := e.spec(1)
	s.Path = filepath.Join(e.dir, "missing")
	p := e.launch(t, 0, s)
	waitChan(t, p.Done(), "exit")
	x := p.Exit()
	if x.Code != shim.ExitNotFound || !strings.Contains(x.StderrTail, "cannot exec worker command") {
		t.Fatalf("exit %+v", x)
	}
}

func TestLaunchFailsWithoutShim(t *testing.T) {
	e := newProcEnv(t)
	e.l.Self = filepath.Join(e.dir, "no-such-exe")
	if _, err := e.l.Launch(0, e.spec(1), nil); !errors.Is(err, errNotStarted) {
		t.Fatalf("Launch: %v", err)
	}
	if names, _ := os.ReadDir(e.l.NotifyDir); len(names) != 0 {
		t.Fatalf("notify socket left behind: %v", names)
	}
}

func TestKillKillsProcessGroup(t *testing.T) {
	e := newProcEnv(t)
	path := filepath.Join(e.dir, "report.json")
	p := e.launch(t, 0, e.spec(1, "WP_REPORT="+path, "WP_GRANDCHILD=1", "WP_NOTIFY=1"))
	waitChan(t, p.Ready(), "READY=1")
	gc := readReport(t, path).Grandchild
	if gc <= 0 || !alive(gc) {
		t.Fatalf("grandchild %d not running", gc)
	}
	p.Kill()
	waitChan(t, p.Done(), "exit")
	waitFor(t, "grandchild to die", func() bool { return !alive(gc) })
}

// alive reports whether pid runs and is not a zombie (a dead grandchild
// may wait a while for init to reap it).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// pid (comm) S ...: the state follows the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] != 'Z' && s[i+2] != 'X'
}

// golang/go#43894: taking a listener's fd through os.File.Fd switches the
// shared socket to blocking mode, for the primary and every worker.
func TestListenerStaysNonBlocking(t *testing.T) {
	e := newProcEnv(t)
	nonblock := func() bool {
		fl, err := unix.FcntlInt(uintptr(e.fd), unix.F_GETFL, 0)
		if err != nil {
			t.Fatal(err)
		}
		return fl&unix.O_NONBLOCK != 0
	}
	if !nonblock() {
		t.Fatal("listener blocking before any launch")
	}
	p := e.launch(t, 0, e.spec(1, "WP_NOTIFY=1"))
	if !nonblock() {
		t.Fatal("listener blocking after Launch")
	}
	waitChan(t, p.Ready(), "READY=1")
	p.Kill()
	waitChan(t, p.Done(), "exit")
	if !nonblock() {
		t.Fatal("listener blocking after the worker ran")
	}
}
