//go:build linux

package integration

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/internal/adopt"
	"github.com/handoff-dev/handoff/internal/testutil"
)

// Servers that bind their own port, run under handoff unmodified: the
// primary adopts their bind (--adopt-bind), so they accept from its socket.

// needAdoption skips the test where the kernel or the seccomp policy does
// not allow bind adoption (as --adopt-bind auto would turn it off),
// except under CI, where it must work (testutil.Need).
func needAdoption(t *testing.T) {
	t.Helper()
	if err := adopt.Probe(); err != nil {
		testutil.Need(t, "bind adoption unavailable here: %v", err)
	}
}

// listenWatch samples the TCP sockets listening on a port, every few
// milliseconds, for as long as a test runs: every one must be a socket
// the primary made and holds (one shared socket, or a member of its
// steered group per worker), never a worker's own bind.
type listenWatch struct {
	p       *Primary
	port    int
	stop    chan struct{}
	done    chan struct{}
	mu      sync.Mutex
	samples int
	inodes  map[string]bool // every listening socket seen on the port
	bad     []string        // sockets listening that no primary held
}

func watchListening(t *testing.T, p *Primary) *listenWatch {
	t.Helper()
	w := &listenWatch{p: p, port: p.port(), stop: make(chan struct{}), done: make(chan struct{}), inodes: map[string]bool{}}
	go func() {
		defer close(w.done)
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			got := listeningInodes(w.port)
			var fresh []string
			w.mu.Lock()
			w.samples++
			for _, ino := range got {
				if !w.inodes[ino] {
					w.inodes[ino] = true
					fresh = append(fresh, ino)
				}
			}
			w.mu.Unlock()
			for _, ino := range fresh {
				if !w.primaryHolds(ino) && slices.Contains(listeningInodes(w.port), ino) {
					w.mu.Lock()
					w.bad = append(w.bad, fmt.Sprintf("%s: socket %s listens, held by no primary %v",
						time.Now().Format("15:04:05.000"), ino, w.p.PrimaryPIDs()))
					w.mu.Unlock()
				}
			}
			select {
			case <-w.stop:
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(w.end)
	return w
}

// primaryHolds reports whether a primary of the test holds the socket.
func (w *listenWatch) primaryHolds(ino string) bool {
	for _, pid := range w.p.PrimaryPIDs() {
		links, err := fdLinks(pid)
		if err != nil {
			continue
		}
		for _, l := range links {
			if l == "socket:["+ino+"]" {
				return true
			}
		}
	}
	return false
}

func (w *listenWatch) end() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

// check ends the watch and fails the test if a socket listened on the
// port that no primary held (a worker's own bind, not adopted), or if
// none was ever seen.
func (w *listenWatch) check(t *testing.T) {
	t.Helper()
	w.end()
	t.Logf("port %d: %d samples, listening sockets seen %v", w.port, w.samples, w.inodes)
	if len(w.bad) > 0 {
		t.Errorf("port %d: sockets of no primary listened: %q", w.port, w.bad)
	}
	if len(w.inodes) == 0 {
		t.Errorf("port %d: no listening socket seen", w.port)
	}
}

// listeningInodes returns the inodes of the TCP sockets (IPv4 and IPv6)
// that listen on port, in this network namespace.
func listeningInodes(port int) []string {
	var out []string
	for _, s := range listeningSockets(port) {
		out = append(out, s.inode)
	}
	return out
}

// listenSocket is a TCP socket listening on a port: its inode, and how
// many connections wait in its accept queue (for a listening socket the
// kernel shows that as the rx_queue of /proc/net/tcp).
type listenSocket struct {
	inode  string
	queued int
}

// listeningSockets returns the TCP sockets (IPv4 and IPv6) that listen on
// port, in this network namespace. The kernel lists the listening sockets
// first: the reading stops at the first other one, which keeps a sample
// short on a machine with many connections.
func listeningSockets(port int) []listenSocket {
	var out []listenSocket
	local := fmt.Sprintf(":%04X", port)
	for _, name := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		f, err := os.Open(name)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // the header
		for sc.Scan() {
			// sl local_address rem_address st tx_queue:rx_queue ... inode
			fs := strings.Fields(sc.Text())
			if len(fs) < 10 || fs[3] != "0A" {
				break
			}
			if !strings.HasSuffix(fs[1], local) || slices.ContainsFunc(out, func(s listenSocket) bool { return s.inode == fs[9] }) {
				continue
			}
			_, rx, _ := strings.Cut(fs[4], ":")
			queued, _ := strconv.ParseInt(rx, 16, 64)
			out = append(out, listenSocket{inode: fs[9], queued: int(queued)})
		}
		f.Close()
	}
	return out
}

func (p *Primary) port() int {
	_, port, err := net.SplitHostPort(p.Addr())
	if err != nil {
		p.t.Fatal(err)
	}
	n, _ := strconv.Atoi(port)
	return n
}

// checkAdopted fails the test unless every worker started logged that its
// bind was adopted.
func checkAdopted(t *testing.T, p *Primary) {
	t.Helper()
	adopted := map[int]bool{}
	for _, e := range p.Log.Filter("worker bind adopted") {
		adopted[e.Int0("pid")] = true
	}
	for _, e := range p.Log.Filter("worker spawned") {
		if pid := e.Int0("pid"); !adopted[pid] {
			t.Errorf("worker %d: no \"worker bind adopted\"", pid)
		}
	}
	if len(adopted) == 0 {
		t.Error("no bind adopted")
	}
}

// TestAdoptGoListenAndServe: a Go net/http server calling
// ListenAndServe(":"+$PORT), with Shutdown on SIGTERM (integration/
// bindserver), serves under handoff run through deploys of new binaries
// and a self-upgrade of the primary (whose successor adopts its own
// workers' binds) under load: no failed request, the new version at the
// end, and no listening socket on the port but the primary's throughout. A
// worker killed then is replaced by one whose bind is adopted too.
func TestAdoptGoListenAndServe(t *testing.T) {
	t.Parallel()
	needAdoption(t)
	p := StartPrimary(t, Options{Server: "bind-v1", Ready: "delay:300ms", Flags: []string{"--adopt-bind", "on"}})
	watch := watchListening(t, p)
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	load := startLoad(t, p.URL())
	for _, v := range []string{"v2", "v1"} {
		deployUnderLoad(t, p, load, "bind-"+v, v)
		waitRequests(t, load, 300, 10*time.Second)
		noFailuresSoFar(t, load, "deploy of "+v)
	}
	old := p.Current()
	p.InstallHandoff()
	if u := deployUnderLoad(t, p, load, "bind-v2", "v2"); u.Started.Str("kind") != "primary" {
		t.Errorf("deploy with a new handoff binary: kind %q, want primary", u.Started.Str("kind"))
	}
	successor := p.waitSuccessor(old, 30*time.Second)
	waitRequests(t, load, 300, 10*time.Second)
	noFailuresSoFar(t, load, "self-upgrade")
	deployUnderLoad(t, p, load, "bind-v1", "v1")
	waitRequests(t, load, 300, 10*time.Second)
	noFailuresSoFar(t, load, "deploy from the new primary")
	checkLoad(t, load, "v1")
	watch.check(t)
	checkInvariant(t, p.Log.Events(), p.Workers)

	// A worker killed is replaced, and its replacement's bind adopted too.
	mark := p.Log.Len()
	// A slot's current worker: an old one may still drain its socket.
	victim := p.readyWorker()
	p.Signal(victim, syscall.SIGKILL)
	if _, ok := p.Log.Wait(mark, 20*time.Second, func(e Event) bool {
		return e.Msg == "worker bind adopted" && e.Int0("pid") != victim
	}); !ok {
		t.Fatalf("no bind adopted after worker %d was killed\n%s", victim, p.Tail(30))
	}
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	checkAdopted(t, p)
	p.shutdownAll(successor)
}

// TestAdoptUnixSocket: a Go server that removes a stale socket file and
// binds its unix path itself (and whose listener removes the file when it
// closes, as Go's does) serves on a --listen unix: socket through deploys
// under load: no failed request, the file there throughout.
func TestAdoptUnixSocket(t *testing.T) {
	t.Parallel()
	needAdoption(t)
	sock := filepath.Join(shortTempDir(t), "app.sock")
	p := StartPrimary(t, Options{Server: "bind-v1", Ready: "bind", Listen: []string{"unix:" + sock},
		Flags: []string{"--adopt-bind", "on"}, Env: []string{"UNIX_SOCKET=" + sock}})
	c := unixClient(sock, 5*time.Second)
	p.WaitServingVia(c, "http://unix/", "v1", 10*time.Second)
	load := startLoadUnix(t, sock)
	for _, v := range []string{"v2", "v1", "v2"} {
		p.Install("bind-" + v)
		p.DeployOK(60 * time.Second)
		p.WaitServingVia(c, "http://unix/", v, 20*time.Second)
		waitRequests(t, load, 300, 10*time.Second)
		if fi, err := os.Lstat(sock); err != nil || fi.Mode()&os.ModeSocket == 0 {
			t.Fatalf("after the deploy of %s, the socket file: %v", v, err)
		}
	}
	checkLoad(t, load, "v2")
	if n := len(p.Log.Filter("worker unlink of a listener's socket file ignored")); n == 0 {
		t.Error("no worker unlink of the socket file was seen")
	}
	checkAdopted(t, p)
	checkInvariant(t, p.Log.Events(), p.Workers)
	p.shutdownAll(p.Current())
}

// exampleBinding runs a program that binds $PORT under handoff run with
// bind adoption and --ready bind, deploys new versions (a VERSION file)
// under load, and checks what TestAdoptGoListenAndServe does.
func exampleBinding(t *testing.T, o Options, versions ...string) {
	t.Helper()
	needAdoption(t)
	prepare := o.Prepare
	o.Prepare = func(dir string) {
		installFile(t, filepath.Join(dir, "VERSION"), "v1\n")
		prepare(dir)
	}
	// Ready when its bind is adopted: Python under pyenv can take seconds
	// to get there on a busy machine.
	o.Ready = "bind"
	o.Flags = append(o.Flags, "--adopt-bind", "on", "--drain-timeout", "15s")
	p := StartPrimary(t, o)
	watch := watchListening(t, p)
	p.WaitServing(p.URL(), "v1", 30*time.Second)
	load := startLoad(t, p.URL())
	for _, v := range versions {
		deployVersionFile(t, p, v)
		waitRequests(t, load, 300, 30*time.Second)
	}
	checkLoad(t, load, versions[len(versions)-1])
	watch.check(t)
	checkInvariant(t, p.Log.Events(), p.Workers)
	checkAdopted(t, p)
	p.shutdownAll(p.Current())
}

// TestAdoptNodeListen: examples/node-port, a Node server calling
// server.listen(PORT) and closing its server on SIGTERM.
func TestAdoptNodeListen(t *testing.T) {
	t.Parallel()
	node := needProgram(t, "node")
	exampleBinding(t, Options{
		Command: node,
		Args:    []string{"server.js"},
		Prepare: func(dir string) { copyExample(t, "node-port", dir, "server.js") },
	}, "v2", "v3", "v4")
}

// TestAdoptPythonHTTPServer: Python's http.server (integration/bindpy),
// binding ("", PORT).
func TestAdoptPythonHTTPServer(t *testing.T) {
	t.Parallel()
	python := needProgram(t, "python3")
	exampleBinding(t, Options{
		Command: python,
		Args:    []string{"server.py"},
		Prepare: func(dir string) {
			root, err := moduleRoot()
			if err != nil {
				t.Fatal(err)
			}
			if err := copyFile(filepath.Join(root, "integration", "bindpy", "server.py"), filepath.Join(dir, "server.py"), 0o644); err != nil {
				t.Fatal(err)
			}
		},
	}, "v2", "v3", "v4")
}

// TestAdoptOffSaysWhy: with --adopt-bind off, a server that binds the
// --listen port fails at the first start, and the one line says so and
// what to do, quoting the end of the worker's stderr (for Node, the error
// as well as the version banner its crash ends with); nothing is left
// running.
func TestAdoptOffSaysWhy(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	server := filepath.Join(dir, "server")
	if err := copyFile(servers["bind-v1"], server, 0o755); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		command []string
		want    []string
	}{
		{"go", []string{server}, []string{"exited at start: exit status 1", "bind: address already in use"}},
	}
	node, err := exec.LookPath("node")
	if err != nil && testutil.Strict() {
		t.Fatalf("node is not installed; .ci/deps (make deps) installs it")
	}
	if err == nil {
		copyExample(t, "node-port", dir, "server.js")
		cases = append(cases, struct {
			name    string
			command []string
			want    []string
		}{"node", []string{node, filepath.Join(dir, "server.js")}, []string{"exited at start: exit status 1",
			"Error: listen EADDRINUSE: address already in use", "Node.js v"}})
	}
	for _, c := range cases {
		mark := newMark(t)
		args := append([]string{"run", "--adopt-bind", "off", "--listen", "127.0.0.1:0", "--workers", "2", "--ready", "delay:5s", "--"}, c.command...)
		r := runHandoff(t, "", []string{markEnv + "=" + mark}, nil, args...)
		line := lastLine(r.stderr)
		t.Logf("%s: %s", c.name, line)
		oneLine(t, c.name+": a server binding the --listen port, adoption off", line, append(c.want, "first workers failed",
			"its stderr ends: ", "if it binds a --listen address itself", "--adopt-bind auto or on", "fd 3 (LISTEN_FDS)")...)
		if r.code != 1 {
			t.Errorf("%s: exit status %d, want 1", c.name, r.code)
		}
		if left := waitGone(markedPIDs(mark), 3*time.Second); len(left) > 0 {
			t.Errorf("%s: processes left running: %v", c.name, left)
		}
	}
}

// TestAdoptAutoRefused: where the seccomp policy refuses seccomp() (a
// container runtime's, simulated by testutil.NoSeccompMain), the default
// --adopt-bind auto turns adoption off with one info line that says why,
// and a LISTEN_FDS worker serves as ever; --adopt-bind on, and --ready
// bind, are start-up errors that name the cause.
func TestAdoptAutoRefused(t *testing.T) {
	t.Parallel()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// This test binary, as a wrapper (testutil.NoSeccompMain).
	noSeccomp := []string{testutil.EnvNoSeccomp + "=1"}
	p := StartPrimary(t, Options{Wrap: []string{self}, Env: noSeccomp})
	offs := p.Log.Filter("bind adoption off")
	if len(offs) != 1 || !strings.Contains(offs[0].Str("reason"), "seccomp() refused") || offs[0].Str("level") != "info" {
		t.Errorf("events %v, want one info \"bind adoption off\" saying seccomp() was refused", offs)
	}
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	if n := len(p.Log.Filter("worker bind adopted", "bind adoption failed")); n != 0 {
		t.Errorf("%d adoption events with adoption off", n)
	}
	p.shutdownAll(p.PID)

	for _, flag := range [][]string{{"--adopt-bind", "on"}, {"--ready", "bind"}} {
		args := append(append([]string{handoffBin, "run"}, flag...), "--listen", "127.0.0.1:0", "--", servers["v1"])
		r := runHandoff(t, self, noSeccomp, nil, args...)
		oneLine(t, strings.Join(flag, " ")+" under a policy refusing seccomp()", r.stderr,
			strings.Join(flag, " ")+": bind adoption cannot work here: seccomp() refused", "operation not permitted")
		if r.code != 1 {
			t.Errorf("%s: exit status %d, want 1", flag, r.code)
		}
	}
}

// lastLine is the last line of s: a failed start's one line comes last,
// after the workers' own stderr, which is the primary's.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return lines[len(lines)-1] + "\n"
}
