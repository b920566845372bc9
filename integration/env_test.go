//go:build linux

package integration

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/handoff-dev/handoff/internal/testutil"
)

// crashLine is what the crash build of the testserver prints before
// exiting 3.
const crashLine = "testserver: crashing at start (mode=crash)"

// envReply is what a worker said about itself on one connection: "/"
// then "/env".
type envReply struct {
	Reply
	Env    map[string]string
	FDs    []int // open when the worker started
	FDsNow []int
}

func parseInts(s string) []int {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(f)); err == nil {
			out = append(out, n)
		}
	}
	return out
}

func parseEnvBody(body string) (map[string]string, []int, []int) {
	env := map[string]string{}
	var fds, now []int
	for _, line := range strings.Split(body, "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		switch k {
		case "fds":
			fds = parseInts(v)
		case "fds_now":
			now = parseInts(v)
		default:
			env[k] = v
		}
	}
	return env, fds, now
}

// askWorker sends "GET /" and "GET /env" on one connection, so both
// answers come from the same worker.
func askWorker(network, addr string) (envReply, error) {
	c, err := net.DialTimeout(network, addr, 2*time.Second)
	if err != nil {
		return envReply{}, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	var bodies []string
	for _, path := range []string{"/", "/env"} {
		if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: test\r\n\r\n", path); err != nil {
			return envReply{}, err
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return envReply{}, fmt.Errorf("GET %s: %v", path, err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return envReply{}, err
		}
		if resp.StatusCode != 200 {
			return envReply{}, fmt.Errorf("GET %s: %s %q", path, resp.Status, b)
		}
		bodies = append(bodies, string(b))
	}
	r := envReply{Reply: parseReply(200, bodies[0])}
	r.Env, r.FDs, r.FDsNow = parseEnvBody(bodies[1])
	return r, nil
}

// nListeners is the number of listeners TestWorkerEnvironment passes.
const nListeners = 2

// standaloneFDs runs the testserver by itself, without handoff, with
// nListeners inherited sockets at fds 3, 4, ... and returns the fds it
// reports as open at start: stdio, those sockets and what the Go runtime
// opens of its own before main.
func standaloneFDs(t *testing.T, old oldKernel) []int {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "server")
	if err := copyFile(servers["v1"], bin, 0o755); err != nil {
		t.Fatal(err)
	}
	mark := newMark(t)
	cmd := exec.Command(bin, "--listen", "127.0.0.1:0")
	if old.Wrap != nil {
		cmd = exec.Command(old.Wrap[0], append(old.Wrap[1:len(old.Wrap):len(old.Wrap)], cmd.Args...)...)
	}
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(k, "LISTEN_") && k != "NOTIFY_SOCKET" && !strings.HasPrefix(k, "HANDOFF_") {
			env = append(env, kv)
		}
	}
	cmd.Env = append(append(env, markEnv+"="+mark), old.Env...)
	// Two inherited sockets at fds 3 and 4, as under handoff, so that the
	// runtime's own fds get the same numbers; without LISTEN_FDS the
	// testserver leaves them alone.
	for i := 0; i < nListeners; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		f, err := ln.(*net.TCPListener).File()
		ln.Close()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		cmd.ExtraFiles = append(cmd.ExtraFiles, f)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = errW
	if cmd, err = startCmd(cmd); err != nil {
		t.Fatal(err)
	}
	errW.Close()
	waited := make(chan struct{})
	go func() { cmd.Wait(); close(waited) }()
	t.Cleanup(func() {
		signalOurs(cmd.Process.Pid, syscall.SIGKILL, mark, dir)
		<-waited
	})
	addrc := make(chan string, 1)
	go func() {
		defer errR.Close()
		re := regexp.MustCompile(`listening on (\S+)`)
		sc := bufio.NewScanner(errR)
		for sc.Scan() {
			if m := re.FindStringSubmatch(sc.Text()); m != nil {
				addrc <- m[1]
			}
		}
	}()
	var addr string
	select {
	case addr = <-addrc:
	case <-time.After(10 * time.Second):
		t.Fatalf("standalone testserver did not report its address")
	}
	r, err := askWorker("tcp", addr)
	if err != nil {
		t.Fatalf("standalone testserver: %v", err)
	}
	return r.FDs
}

// TestWorkerEnvironment: workers get the socket-activation and handoff
// variables, their own NOTIFY_SOCKET, exactly stdio and the listeners as
// fds, and both a TCP and a unix listener serve.
func TestWorkerEnvironment(t *testing.T) {
	t.Parallel()
	checkWorkerEnvironment(t, oldKernel{})
}

// TestWorkerEnvironmentOldKernel: the same on the oldest kernel handoff
// supports (Linux 4.18: no close_range, no pidfd).
func TestWorkerEnvironmentOldKernel(t *testing.T) {
	t.Parallel()
	checkWorkerEnvironment(t, oldKernelWrap(t))
}

func checkWorkerEnvironment(t *testing.T, old oldKernel) {
	aux := t.TempDir()
	sock := filepath.Join(aux, "admin.sock")
	// The primary's own NOTIFY_SOCKET, as under systemd: workers must not
	// get it.
	ownNotify := filepath.Join(aux, "primary-notify.sock")
	nl, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: ownNotify, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nl.Close() })
	// An fd the primary inherits without close-on-exec: it must not reach
	// the workers.
	canary, err := os.Create(filepath.Join(aux, "canary"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { canary.Close() })
	// Behind other inherited fds, at 8: past every fd a worker is given
	// (a worker's fds 3, 4 are the listeners, whatever the primary had
	// there).
	inherited := []*os.File{}
	for i := 0; i < 5; i++ {
		f, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		inherited = append(inherited, f)
	}
	inherited = append(inherited, canary)

	baseline := standaloneFDs(t, old)
	p := StartPrimary(t, Options{
		Listen:     []string{"web=127.0.0.1:0", "admin=unix:" + sock},
		Env:        append([]string{"NOTIFY_SOCKET=" + ownNotify}, old.Env...),
		ExtraFiles: inherited,
		Wrap:       old.Wrap,
	})
	var web string
	for _, e := range p.Log.Filter("listening") {
		if e.Str("name") == "web" {
			web = e.Str("addr")
		}
	}
	if web == "" {
		t.Fatalf("no \"listening\" event named web with an addr: %v", p.Log.Filter("listening"))
	}
	wantFDs := baseline
	listenerInodes := primaryListenerInodes(t, p.PID, web, sock)
	// The unix listener is one socket; the TCP one is one socket too, or
	// with a socket per worker (a steered balance mode), one per worker.
	steered := p.Status().Balance != "shared"
	wantSockets := nListeners
	if steered {
		wantSockets = nListeners - 1 + p.Workers
	}
	if len(listenerInodes) != wantSockets {
		t.Errorf("found listening sockets %v of the primary, want %d (steered: %v)", listenerInodes, wantSockets, steered)
	}

	seen := map[int]envReply{}
	end := time.Now().Add(15 * time.Second)
	// A little apart: on a loaded machine one worker may win every accept
	// on the shared socket for a while.
	for n := 0; n < 2000 && len(seen) < p.Workers && time.Now().Before(end); n++ {
		r, err := askWorker("tcp", web)
		if err != nil {
			t.Fatalf("asking a worker: %v", err)
		}
		if _, ok := seen[r.PID]; !ok && r.PID > 0 {
			seen[r.PID] = r
		}
		time.Sleep(5 * time.Millisecond)
	}
	if len(seen) < p.Workers {
		t.Errorf("only %d of %d workers answered in 15s", len(seen), p.Workers)
	}
	spawned := p.LiveWorkers()
	notify := map[string]int{}
	holders := map[string]int{} // listening socket → workers holding it
	for pid, r := range seen {
		t.Logf("worker %d: LISTEN_FDS=%s LISTEN_FDNAMES=%s LISTEN_PID=%s HANDOFF_WORKER=%s HANDOFF_GENERATION=%s NOTIFY_SOCKET=%s fds=%v fds_now=%v",
			pid, r.Env["LISTEN_FDS"], r.Env["LISTEN_FDNAMES"], r.Env["LISTEN_PID"], r.Env["HANDOFF_WORKER"],
			r.Env["HANDOFF_GENERATION"], r.Env["NOTIFY_SOCKET"], r.FDs, r.FDsNow)
		if got := r.Env["LISTEN_PID"]; got != strconv.Itoa(pid) {
			t.Errorf("worker %d: LISTEN_PID=%q, want its own pid", pid, got)
		}
		if got := r.Env["LISTEN_FDS"]; got != strconv.Itoa(nListeners) {
			t.Errorf("worker %d: LISTEN_FDS=%q, want %d", pid, got, nListeners)
		}
		if got := r.Env["LISTEN_FDNAMES"]; got != "web:admin" {
			t.Errorf("worker %d: LISTEN_FDNAMES=%q, want \"web:admin\"", pid, got)
		}
		slot, err := strconv.Atoi(r.Env["HANDOFF_WORKER"])
		if err != nil || slot < 0 || slot >= p.Workers {
			t.Errorf("worker %d: HANDOFF_WORKER=%q, want 0..%d", pid, r.Env["HANDOFF_WORKER"], p.Workers-1)
		}
		if sp, ok := spawned[pid]; !ok {
			t.Errorf("worker %d answered but the log shows no live worker with that pid", pid)
		} else {
			if g := r.Env["HANDOFF_GENERATION"]; g != sp.Str("generation") {
				t.Errorf("worker %d: HANDOFF_GENERATION=%q, the log says generation %s", pid, g, sp.Str("generation"))
			}
			if s := sp.Int0("slot"); s != slot {
				t.Errorf("worker %d: HANDOFF_WORKER=%d, the log says slot %d", pid, slot, s)
			}
		}
		ns := r.Env["NOTIFY_SOCKET"]
		if ns == "" || ns == ownNotify {
			t.Errorf("worker %d: NOTIFY_SOCKET=%q, want a socket of its own (not the primary's %q)", pid, ns, ownNotify)
		}
		if other, dup := notify[ns]; dup {
			t.Errorf("workers %d and %d share NOTIFY_SOCKET %q", other, pid, ns)
		}
		notify[ns] = pid
		if _, port, _ := net.SplitHostPort(web); r.Env["PORT"] != port {
			t.Errorf("worker %d: PORT=%q, want %s, the first TCP listener's port", pid, r.Env["PORT"], port)
		}
		if _, ok := r.Env["HANDOFF_ADOPT_FD"]; ok {
			t.Errorf("worker %d: HANDOFF_ADOPT_FD, the exec step's, reached the command", pid)
		}
		if r.Env[markEnv] != p.Mark {
			t.Errorf("worker %d: the primary's environment (%s) did not reach it", pid, markEnv)
		}

		// Open at start: exactly what the testserver has when started
		// alone with as many inherited sockets.
		if !slices.Equal(r.FDs, wantFDs) {
			t.Errorf("worker %d: fds open at start %v, want %v (as the testserver alone with %d inherited sockets)",
				pid, r.FDs, wantFDs, nListeners)
		}
		for ino := range checkSharedFiles(t, pid, p.PID, listenerInodes, canary.Name()) {
			holders[ino]++
		}
	}
	// Each worker has a TCP socket of its own when steered, and shares the
	// unix one.
	if len(seen) == p.Workers && steered && len(holders) != 1+p.Workers {
		t.Errorf("the workers hold listening sockets %v (socket → workers), want a TCP socket each and the unix one shared", holders)
	}

	// The listeners are in blocking mode at exec, as systemd passes them:
	// the worker that started first saw them so. (The testserver's
	// net.FileListener then sets O_NONBLOCK on the description it shares
	// with the other workers, as any Go worker does.)
	blockingAtExec := 0
	for pid, r := range seen {
		nb := parseInts(r.Env["nonblocking"])
		t.Logf("worker %d: non-blocking at exec: %v", pid, nb)
		if !slices.Contains(nb, 3) && !slices.Contains(nb, 4) {
			blockingAtExec++
		}
	}
	if len(seen) > 0 && blockingAtExec == 0 {
		t.Errorf("no worker found its listeners (fds 3, 4) in blocking mode at exec")
	}

	// The unix listener serves too.
	status, body, err := get(unixClient(sock, 5*time.Second), "http://admin/")
	if err != nil || status != 200 || !strings.HasPrefix(body, "v1 ") {
		t.Errorf("GET over unix socket %s: status %d body %q err %v", sock, status, body, err)
	}
}

// primaryListenerInodes returns the socket inodes of the primary's TCP
// listener on tcpAddr and unix listener on unixPath.
func primaryListenerInodes(t *testing.T, pid int, tcpAddr, unixPath string) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	a, err := net.ResolveTCPAddr("tcp", tcpAddr)
	if err != nil {
		t.Fatal(err)
	}
	ip := a.IP.To4()
	local := fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], a.Port)
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp", pid))
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		// sl local rem st ... inode
		if len(f) >= 10 && f[1] == local && f[3] == "0A" {
			out[f[9]] = true
		}
	}
	b, _ = os.ReadFile(fmt.Sprintf("/proc/%d/net/unix", pid))
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		// Num RefCount Protocol Flags Type St Inode Path; Flags 00010000
		// is a listening socket.
		if len(f) >= 8 && f[7] == unixPath && f[3] == "00010000" {
			out[f[6]] = true
		}
	}
	return out
}

// kcmpFile reports whether fd1 of pid1 and fd2 of pid2 are the same open
// file description (kcmp(2) KCMP_FILE).
func kcmpFile(pid1, pid2, fd1, fd2 int) (bool, error) {
	const kcmpFile = 0
	r, _, errno := unix.Syscall6(unix.SYS_KCMP, uintptr(pid1), uintptr(pid2), kcmpFile, uintptr(fd1), uintptr(fd2), 0)
	if errno != 0 {
		return false, errno
	}
	return r == 0, nil
}

// checkSharedFiles checks that worker shares no open file with primary
// beyond stdio and the listening sockets, and holds every listener.
func checkSharedFiles(t *testing.T, worker, primary int, listeners map[string]bool, canary string) map[string]bool {
	t.Helper()
	wl, err := fdLinks(worker)
	if err != nil {
		t.Errorf("worker %d: %v", worker, err)
		return nil
	}
	pl, err := fdLinks(primary)
	if err != nil {
		t.Errorf("primary %d: %v", primary, err)
		return nil
	}
	held := map[string]bool{}
	for wfd, l := range wl {
		if l == canary {
			t.Errorf("worker %d: fd %d is %s, which the primary inherited", worker, wfd, l)
		}
		if inode, ok := strings.CutPrefix(l, "socket:["); ok {
			inode = strings.TrimSuffix(inode, "]")
			if listeners[inode] {
				held[inode] = true
				continue
			}
		}
		if wfd <= 2 {
			continue
		}
		for pfd := range pl {
			same, err := kcmpFile(worker, primary, wfd, pfd)
			if err == unix.ENOSYS || err == unix.EPERM {
				if testutil.Strict() {
					t.Errorf("kcmp unavailable (%v): shared files not checked", err)
				} else {
					t.Logf("kcmp unavailable (%v): shared files not checked", err)
				}
				return held
			}
			if err == nil && same {
				t.Errorf("worker %d: fd %d (%s) is the primary's fd %d", worker, wfd, l, pfd)
			}
		}
	}
	if len(held) != nListeners {
		t.Errorf("worker %d holds listeners %v of %v, want %d", worker, held, listeners, nListeners)
	}
	return held
}
