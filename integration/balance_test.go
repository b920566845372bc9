//go:build linux

package integration

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/internal/loadgen"
	"github.com/handoff-dev/handoff/internal/steer"
	"github.com/handoff-dev/handoff/internal/testutil"
)

// The balance modes as users meet them: how keep-alive connections spread
// over the workers, the mode an unprivileged primary gets, the shared
// socket a kernel without SO_REUSEPORT leaves, unix listeners beside a
// steered group, and a group of 64 workers.

// keepAlivePIDs opens n connections to addr at once, then sends one
// request on each and returns the pid that answered on each connection.
func keepAlivePIDs(t *testing.T, addr string, n int) []int {
	t.Helper()
	conns := make([]net.Conn, n)
	for i := range conns {
		c, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		t.Cleanup(func() { c.Close() })
		conns[i] = c
	}
	pids := make([]int, n)
	for i, c := range conns {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		pids[i] = parseReply(resp.StatusCode, string(b)).PID
	}
	return pids
}

// spread counts the connections by pid.
func spread(pids []int) map[int]int {
	out := map[int]int{}
	for _, p := range pids {
		out[p]++
	}
	return out
}

// needMode skips the test unless handoff's default balance here is mode,
// except under CI (testutil.Need).
func needMode(t *testing.T, mode steer.Mode) {
	t.Helper()
	if got, why := steer.Detect(); got != mode {
		testutil.Need(t, "balance %s here, not %s: %s", got, mode, why)
	}
}

// TestBalanceRoundRobinKeepAlive: four workers, eight keep-alive
// connections opened at once (a proxy's pool): round-robin gives each
// worker exactly two, and status, --json and the metrics name the mode and
// count what each slot was given.
func TestBalanceRoundRobinKeepAlive(t *testing.T) {
	t.Parallel()
	needMode(t, steer.RoundRobin)
	p := StartPrimary(t, Options{Workers: 4, Flags: []string{"--balance", "round-robin", "--metrics", "127.0.0.1:0"}})
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	checkBalanced(t, p)
	pids := keepAlivePIDs(t, p.Addr(), 8)
	by := spread(pids)
	t.Logf("8 connections over 4 workers: %v", by)
	if len(by) != 4 {
		t.Errorf("8 connections reached %d workers (%v), want all 4", len(by), by)
	}
	for pid, n := range by {
		if n != 2 {
			t.Errorf("worker %d took %d of 8 connections, want 2: %v", pid, n, by)
		}
	}
	for _, w := range p.Status().Workers {
		if w.Queue == nil {
			t.Errorf("status --json: worker %d without \"queue\"", w.Pid)
		}
		if w.Given == nil || *w.Given < 2 {
			t.Errorf("status --json: worker %d was given %v connections, want at least 2", w.Pid, w.Given)
		}
	}
	human := p.CtlOK("status").stdout
	if !strings.Contains(human, "balance round-robin") || !strings.Contains(human, "QUEUE") {
		t.Errorf("status does not show the balance and the queues:\n%s", human)
	}
	m := scrape(t, p.MetricsURL())
	if m[`handoff_balance_mode{mode="round-robin"}`] != 1 {
		t.Errorf("metrics: %v, want handoff_balance_mode{mode=\"round-robin\"} 1", pick(m, "handoff_balance"))
	}
	if len(pick(m, "handoff_worker_accept_queue")) != 4 || len(pick(m, "handoff_worker_connections_given_total")) != 4 {
		t.Errorf("metrics: want a queue and a given count per slot: %v %v",
			pick(m, "handoff_worker_accept_queue"), pick(m, "handoff_worker_connections_given_total"))
	}
}

// TestBalanceUnprivilegedRandom: a primary run by an unprivileged user
// (nobody), which may not load eBPF, balances at random over a socket per
// worker, says so at start, in status and in --json; every worker gets
// connections, and a deploy under new-connection load loses none.
func TestBalanceUnprivilegedRandom(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		testutil.Need(t, "needs root, to run the primary as nobody")
	}
	needMode(t, steer.RoundRobin) // random is then what nobody gets
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		testutil.Need(t, "no setpriv")
	}
	// The control directory, beside the test's: nobody's.
	ctlBase := shortTempDir(t)
	openToAll(t, ctlBase)
	ctlEnv := "HANDOFF_CONTROL_DIR=" + filepath.Join(ctlBase, "c")
	p := StartPrimary(t, Options{Workers: 4, Env: []string{ctlEnv},
		Wrap: []string{setpriv, "--reuid", "65534", "--regid", "65534", "--clear-groups"},
		Prepare: func(dir string) {
			openToAll(t, filepath.Dir(dir))
			os.Lchown(ctlBase, 65534, 65534)
			filepath.Walk(dir, func(path string, _ os.FileInfo, _ error) error { return os.Lchown(path, 65534, 65534) })
		}})
	ev, ok := p.Log.Wait(0, 5*time.Second, isMsg("balancing"))
	if !ok || ev.Str("mode") != "random" || !strings.Contains(ev.Str("reason"), "eBPF") {
		t.Errorf("an unprivileged primary: %v, want \"balancing\" mode random with why not eBPF", ev.Raw)
	}
	nobody := &syscall.Credential{Uid: 65534, Gid: 65534}
	r := runHandoff(t, p.Bin, []string{ctlEnv}, nobody, "status", "--json")
	var st struct {
		Balance string `json:"balance"`
		Workers []struct {
			Queue *int `json:"queue"`
		} `json:"workers"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil || st.Balance != "random" {
		t.Errorf("status --json as nobody: %v %s; want balance random", err, r)
	}
	for _, w := range st.Workers {
		if w.Queue == nil {
			t.Errorf("status --json: a worker without \"queue\": %s", r.stdout)
		}
	}
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	load := startLoadWith(t, loadgen.Config{URL: p.URL(), NewConn: 8})
	waitRequests(t, load, 200, 10*time.Second)
	deployUnderLoad(t, p, load, "v2", "v2")
	waitRequests(t, load, 200, 10*time.Second)
	checkLoad(t, load, "v2")
	checkInvariant(t, p.Log.Events(), p.Workers)
}

// TestBalanceNoReusePort: on a kernel without SO_REUSEPORT (a seccomp
// filter makes setting it fail, as before Linux 3.9) handoff serves from
// one shared socket, says so and why at start and in status, and deploys
// under load without a failed request; --balance random there is a
// start-up error of one line, with nothing left running.
func TestBalanceNoReusePort(t *testing.T) {
	t.Parallel()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	wrap := Options{Wrap: []string{self}, Env: []string{testutil.EnvNoReusePort + "=1"}}
	p := StartPrimary(t, Options{Workers: 2, Wrap: wrap.Wrap, Env: wrap.Env})
	ev, ok := p.Log.Wait(0, 5*time.Second, isMsg("balancing"))
	if !ok || ev.Str("mode") != "shared" || !strings.Contains(ev.Str("reason"), "SO_REUSEPORT") {
		t.Errorf("without SO_REUSEPORT: %v, want \"balancing\" mode shared, with SO_REUSEPORT in the reason", ev.Raw)
	}
	if b := p.Status().Balance; b != "shared" {
		t.Errorf("status --json: balance %v, want shared", b)
	}
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	load := startLoad(t, p.URL())
	deployUnderLoad(t, p, load, "v2", "v2")
	checkLoad(t, load, "v2")

	dir := t.TempDir()
	r := runHandoff(t, self, append(wrap.Env, "TMPDIR="+dir, "HANDOFF_CONTROL_DIR="+dir),
		nil, handoffBin, "run", "--balance", "random", "--listen", "127.0.0.1:0", "--", servers["v1"])
	if r.code == 0 || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 ||
		!strings.Contains(r.stderr, "--balance random cannot work here") {
		t.Errorf("--balance random without SO_REUSEPORT: %s; want a non-zero exit and one line", r)
	}
	r = runHandoff(t, self, append(wrap.Env, "TMPDIR="+dir, "HANDOFF_CONTROL_DIR="+dir),
		nil, handoffBin, "run", "--ready", "http:/healthz", "--listen", "127.0.0.1:0", "--", servers["v1"])
	if r.code == 0 || strings.Count(strings.TrimSpace(r.stderr), "\n") != 0 ||
		!strings.Contains(r.stderr, "HTTP probes (--ready http:, --health) go through each worker's own socket") {
		t.Errorf("--ready http: without SO_REUSEPORT: %s; want a non-zero exit and one line", r)
	}
}

// TestBalanceUnixBesideGroup: a unix listener beside a TCP one stays one
// socket every worker shares, while the TCP one is a steered group; both
// serve through deploys under load on the unix socket with no failed
// request.
func TestBalanceUnixBesideGroup(t *testing.T) {
	t.Parallel()
	needGroups(t)
	sock := filepath.Join(shortTempDir(t), "app.sock")
	p := StartPrimary(t, Options{Workers: 2, Listen: []string{"127.0.0.1:0", "unix:" + sock}})
	checkBalanced(t, p)
	c := unixClient(sock, 5*time.Second)
	p.WaitServingVia(c, "http://unix/", "v1", 10*time.Second)
	load := startLoadUnix(t, sock)
	tcp := startLoadWith(t, loadgen.Config{URL: p.URL(), NewConn: 4})
	for _, v := range []string{"v2", "v1"} {
		p.Install(v)
		p.DeployOK(60 * time.Second)
		p.WaitServingVia(c, "http://unix/", v, 20*time.Second)
		p.WaitServing(p.URL(), v, 20*time.Second)
		waitRequests(t, load, 200, 10*time.Second)
	}
	checkLoad(t, load, "v1")
	checkLoad(t, tcp, "v1")
	checkInvariant(t, p.Log.Events(), p.Workers)
}

// TestBalance64Workers: a group of 64 workers: 64 keep-alive connections
// opened at once reach every worker (round-robin: one each; random: most
// of them), and a deploy of all 64, 16 at a time, under new-connection
// load loses no request and ends with every slot on the new version.
func TestBalance64Workers(t *testing.T) {
	t.Parallel()
	needGroups(t)
	const n = 64
	p := StartPrimary(t, Options{Workers: n, Flags: []string{"--surge", "16"}})
	mode := p.Status().Balance
	pids := keepAlivePIDs(t, p.Addr(), n)
	by := spread(pids)
	t.Logf("balance %v: %d connections reached %d workers", mode, n, len(by))
	switch {
	case mode == "round-robin" && len(by) != n:
		t.Errorf("round-robin: %d connections reached %d workers, want one each", n, len(by))
	case mode == "random" && len(by) < n/2:
		// 64 uniform draws over 64 reach about 41 workers; fewer than
		// 32 is all but impossible.
		t.Errorf("random: %d connections reached only %d workers", n, len(by))
	}
	load := startLoadWith(t, loadgen.Config{URL: p.URL(), NewConn: 8})
	waitRequests(t, load, 200, 20*time.Second)
	p.Install("v2")
	mark := p.Log.Len()
	p.Signal(p.PID, syscall.SIGHUP)
	if u := p.AwaitUpgrade(mark, 3*time.Minute); u.Aborted() {
		t.Fatalf("deploy of 64 workers: %s", u.End.Raw)
	}
	p.WaitServing(p.URL(), "v2", 30*time.Second)
	checkLoad(t, load, "v2")
}

// shortTempDir is a temporary directory with a short path, removed after
// the test: a unix socket path has at most 107 bytes, which t.TempDir's
// may leave too few of.
func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "ho-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
