package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// event is one JSON line of the primary's log (--log-format json).
type event struct {
	at  time.Time // when the harness read it
	msg string
	f   map[string]any
}

func (e event) int(key string) int {
	switch v := e.f[key].(type) {
	case float64:
		return int(v)
	case string:
		n, _ := strconv.Atoi(v)
		return n
	}
	return 0
}

func (e event) str(key string) string { s, _ := e.f[key].(string); return s }

// primary is a running 'handoff run' whose JSON log is followed.
type primary struct {
	cmd    *exec.Cmd
	exited chan struct{}

	mu      sync.Mutex
	events  []event
	changed chan struct{}
	alive   map[int]int // worker pid → generation, from spawned/exited events
	tail    []string    // last lines that were not events
}

// startPrimary runs handoff with n workers of the bench server on a port
// of its choosing and waits until it is ready. serverArgs go to the server.
func startPrimary(ctx context.Context, handoff, server string, n int, serverArgs ...string) (*primary, string, error) {
	return startPrimaryWith(ctx, handoff, nil, server, n, serverArgs...)
}

// startPrimaryWith is startPrimary with further flags for handoff.
func startPrimaryWith(ctx context.Context, handoff string, flags []string, server string, n int, serverArgs ...string) (*primary, string, error) {
	return startPrimaryCmd(ctx, handoffCmd(handoff, flags, server, n, serverArgs...))
}

// handoffCmd is the command startPrimaryWith runs.
func handoffCmd(handoff string, flags []string, server string, n int, serverArgs ...string) *exec.Cmd {
	// Probation off: an upgrade is measured to the end of its roll.
	args := []string{"run", "--listen", "127.0.0.1:0", "--workers", strconv.Itoa(n), "--ready", "notify",
		"--log-format", "json", "--drain-timeout", "10s", "--min-uptime", "0"}
	args = append(append(append(args, flags...), "--", server), serverArgs...)
	return exec.Command(handoff, args...)
}

// startLibrary runs examples/hello, a program in handoff's library mode
// (its own primary), with n workers.
func startLibrary(ctx context.Context, hello string, n int) (*primary, string, error) {
	return startPrimaryCmd(ctx, exec.Command(hello, "--listen", "127.0.0.1:0", "--workers", strconv.Itoa(n),
		"--log-format", "json", "--drain-timeout", "10s", "--min-uptime", "0"))
}

// startPrimaryCmd starts cmd, a primary that logs JSON to stderr, and
// waits until it is ready.
func startPrimaryCmd(ctx context.Context, cmd *exec.Cmd) (*primary, string, error) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, "", err
	}
	if err := cmd.Start(); err != nil {
		return nil, "", err
	}
	p := &primary{cmd: cmd, exited: make(chan struct{}), changed: make(chan struct{}), alive: map[int]int{}}
	go p.follow(stderr)
	ready, err := p.wait(ctx, 0, 2*time.Minute, func(e event) bool { return e.msg == "primary ready" })
	if err != nil {
		p.stop()
		return nil, "", err
	}
	p.mu.Lock()
	addr := ""
	for _, e := range p.events[:ready+1] {
		if e.msg == "listening" {
			addr = e.str("addr")
		}
	}
	p.mu.Unlock()
	if addr == "" {
		p.stop()
		return nil, "", errors.New("handoff logged no listening address")
	}
	return p, addr, nil
}

func (p *primary) follow(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		var f map[string]any
		p.mu.Lock()
		if json.Unmarshal([]byte(line), &f) == nil {
			e := event{at: time.Now(), f: f}
			e.msg, _ = f["msg"].(string)
			switch e.msg {
			case "worker spawned":
				p.alive[e.int("pid")] = e.int("generation")
			case "worker exited":
				delete(p.alive, e.int("pid"))
			}
			p.events = append(p.events, e)
		} else {
			p.tail = append(p.tail, line)
			if len(p.tail) > 20 {
				p.tail = p.tail[1:]
			}
		}
		close(p.changed)
		p.changed = make(chan struct{})
		p.mu.Unlock()
	}
	p.cmd.Wait()
	close(p.exited)
}

// next is the index the next event will have.
func (p *primary) next() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.events)
}

// wait returns the index of the first event from index from on that
// matches; an "upgrade aborted" or the primary's exit is an error.
func (p *primary) wait(ctx context.Context, from int, timeout time.Duration, match func(event) bool) (int, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		p.mu.Lock()
		for i := from; i < len(p.events); i++ {
			e := p.events[i]
			if match(e) {
				p.mu.Unlock()
				return i, nil
			}
			if e.msg == "upgrade aborted" || e.msg == "first workers failed" {
				p.mu.Unlock()
				return i, fmt.Errorf("handoff: %s: %v", e.msg, e.f["reason"])
			}
		}
		from = len(p.events)
		changed := p.changed
		p.mu.Unlock()
		select {
		case <-changed:
		case <-p.exited:
			return 0, fmt.Errorf("handoff exited: %s", p.lastLines())
		case <-deadline.C:
			return 0, fmt.Errorf("handoff: no matching event within %v", timeout)
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

func (p *primary) lastLines() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.tail, " | ")
}

// deploys deploys n times in a row and returns how long each took
// (deploy's took).
func (p *primary) deploys(ctx context.Context, n int) ([]time.Duration, error) {
	took := make([]time.Duration, 0, n)
	for range n {
		dur, _, err := p.deploy(ctx)
		if err != nil {
			return took, err
		}
		took = append(took, dur)
	}
	return took, nil
}

// deploy sends SIGHUP and returns when the upgrade finished (took: the
// time from the signal) and when, in addition, every worker of an older
// generation has exited (settled).
func (p *primary) deploy(ctx context.Context) (took, settled time.Duration, err error) {
	from := p.next()
	start := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		return 0, 0, err
	}
	return p.awaitDeploy(ctx, from, start)
}

// awaitDeploy waits for the deploy that began at start, looking at the
// events from index from on; see deploy.
func (p *primary) awaitDeploy(ctx context.Context, from int, start time.Time) (took, settled time.Duration, err error) {
	i, err := p.wait(ctx, from, 2*time.Minute, func(e event) bool { return e.msg == "upgrade finished" })
	if err != nil {
		return 0, 0, err
	}
	p.mu.Lock()
	fin := p.events[i]
	p.mu.Unlock()
	took = fin.at.Sub(start)
	gen := fin.int("generation")
	old := func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, g := range p.alive {
			if g < gen {
				return true
			}
		}
		return false
	}
	for old() {
		p.mu.Lock()
		changed := p.changed
		p.mu.Unlock()
		select {
		case <-changed:
		case <-p.exited:
			return 0, 0, errors.New("handoff exited during a deploy")
		case <-time.After(time.Minute):
			return 0, 0, errors.New("old workers still running a minute after the deploy")
		case <-ctx.Done():
			return 0, 0, ctx.Err()
		}
	}
	return took, time.Since(start), nil
}

func (p *primary) pid() int { return p.cmd.Process.Pid }

// workerPIDs are the workers running now, as the log tells.
func (p *primary) workerPIDs() []int {
	p.mu.Lock()
	defer p.mu.Unlock()
	var pids []int
	for pid := range p.alive {
		pids = append(pids, pid)
	}
	sort.Ints(pids)
	return pids
}

// stop asks the primary to shut down and waits (killing its process group
// after 30s).
func (p *primary) stop() {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.exited
	}
}

// server is one bench server process started by the harness (direct or
// the first tableflip generation).
type server struct {
	cmd    *exec.Cmd
	exited chan struct{}
	stderr *tailBuffer
}

func startServer(bin string, args ...string) (*server, error) {
	cmd := exec.Command(bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	tb := &tailBuffer{}
	cmd.Stderr = tb
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &server{cmd: cmd, exited: make(chan struct{}), stderr: tb}
	go func() { cmd.Wait(); close(s.exited) }()
	return s, nil
}

// stop sends sig and waits for the exit (SIGKILL after 30s).
func (s *server) stop(sig syscall.Signal) {
	s.cmd.Process.Signal(sig)
	select {
	case <-s.exited:
	case <-time.After(30 * time.Second):
		s.cmd.Process.Kill()
		<-s.exited
	}
}

type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (t *tailBuffer) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, b...)
	if len(t.buf) > 4096 {
		t.buf = t.buf[len(t.buf)-4096:]
	}
	return len(b), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(string(t.buf))
}

// freeAddr returns a loopback address with a port free a moment ago.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

var probeClient = &http.Client{
	Timeout:   time.Second,
	Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
}

// probe asks addr once, on a new connection, and returns the answer.
func probe(addr string) (string, error) {
	resp, err := probeClient.Get("http://" + addr + "/")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %d", resp.StatusCode)
	}
	return string(b), nil
}

// waitAnswer polls addr until an answer satisfies ok, or the timeout.
func waitAnswer(ctx context.Context, addr string, timeout time.Duration, ok func(string) bool) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		body, err := probe(addr)
		if err == nil && ok(body) {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("answer %q", strings.TrimSpace(body))
		}
		last = err
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s not answering as expected within %v: %v", addr, timeout, last)
}

// procCPU is the user+system CPU time a process has used, from
// /proc/PID/stat (utime and stime, in USER_HZ = 100 ticks per second).
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces: fields count from after ')'.
	s := string(b)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: too short", pid)
	}
	ut, err1 := strconv.ParseInt(fields[11], 10, 64)
	st, err2 := strconv.ParseInt(fields[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	return time.Duration(ut+st) * 10 * time.Millisecond, nil
}

// sumCPU is the CPU time the processes have used (those gone count 0).
func sumCPU(pids []int) time.Duration {
	var sum time.Duration
	for _, pid := range pids {
		if d, err := procCPU(pid); err == nil {
			sum += d
		}
	}
	return sum
}

// procGone tells whether pid has exited (absent or a zombie).
func procGone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(f) == 0 || f[0] == "Z" || f[0] == "X"
}

// procRSS is VmRSS from /proc/PID/status, in bytes.
func procRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
}
