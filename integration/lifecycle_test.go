//go:build linux

package integration

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/internal/loadgen"
)

// TestDeployCoalescing: SIGHUPs sent while a deploy runs lead to at most
// one more deploy, and deploys never overlap.
func TestDeployCoalescing(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{Args: []string{"--ready-after", "1s"}})
	p.Install("slowready")
	mark := p.Log.Len()
	pid := p.Current()
	p.Signal(pid, syscall.SIGHUP)
	first, ok := p.Log.Wait(mark, 10*time.Second, isMsg("upgrade started"))
	if !ok {
		t.Fatalf("no \"upgrade started\" after SIGHUP\n%s", p.Tail(40))
	}
	// Three SIGHUPs in all, back to back, while the first deploy runs.
	p.Signal(pid, syscall.SIGHUP)
	p.Signal(pid, syscall.SIGHUP)
	if _, ok := p.Log.Wait(first.Seq, 0, isMsg("upgrade finished", "upgrade aborted")); ok {
		t.Fatalf("the slow deploy had ended before the extra SIGHUPs were sent")
	}

	u := p.AwaitUpgrade(mark, 30*time.Second)
	if u.Aborted() {
		t.Fatalf("generation %d aborted: %s", u.Gen, u.End.Raw)
	}
	// A coalesced follow-up deploy may start; wait for it to end.
	if _, ok := p.Log.Wait(u.End.Seq+1, 5*time.Second, isMsg("upgrade started")); ok {
		p.AwaitUpgrade(u.End.Seq+1, 30*time.Second)
	}
	// Then nothing more may start: watch for a while.
	last := p.Log.Len()
	if ev, ok := p.Log.Wait(last, 3*time.Second, isMsg("upgrade started")); ok {
		t.Errorf("a further deploy started: %s", ev.Raw)
	}

	started := 0
	running := false
	for _, e := range p.Log.Events()[mark:] {
		switch e.Msg {
		case "upgrade started":
			started++
			if running {
				t.Errorf("\"upgrade started\" while another deploy runs: %s", e.Raw)
			}
			running = true
		case "upgrade finished", "upgrade aborted":
			if !running {
				t.Errorf("%q without a running deploy: %s", e.Msg, e.Raw)
			}
			running = false
		}
	}
	t.Logf("3 SIGHUPs led to %d deploys", started)
	if started < 1 || started > 2 {
		t.Errorf("3 SIGHUPs during a deploy led to %d \"upgrade started\", want 1 or 2", started)
	}
	if running {
		t.Errorf("a deploy is still running at the end")
	}
	p.WaitServing(p.URL(), "vslow", 10*time.Second)
	if p.Exited() {
		t.Errorf("primary exited")
	}
}

// TestHUPDuringStartup: a SIGHUP sent while the primary is starting (after
// its first log line, before "primary ready") neither kills it nor is lost:
// a deploy follows start-up.
func TestHUPDuringStartup(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{Server: "slowready", Args: []string{"--ready-after", "1s"}, NoWait: true})
	if _, ok := p.Log.Wait(0, 20*time.Second, func(Event) bool { return true }); !ok {
		t.Fatalf("primary logged nothing; exited=%v\n%s", p.Exited(), p.Tail(20))
	}
	if _, ok := p.Log.Wait(0, 0, isMsg("primary ready")); ok {
		t.Fatalf("primary already ready before the SIGHUP could be sent; the test cannot check start-up")
	}
	p.Signal(p.PID, syscall.SIGHUP)
	ready := p.WaitReady(30 * time.Second)
	if p.Exited() {
		t.Fatalf("primary exited after a SIGHUP during start-up: %v", p.state)
	}
	u := p.AwaitUpgrade(ready.Seq, 30*time.Second)
	if u.Aborted() {
		t.Errorf("the deploy after start-up aborted: %s", u.End.Raw)
	}
	if u.Started.Seq < ready.Seq {
		t.Errorf("deploy started before \"primary ready\"")
	}
	if p.Exited() {
		t.Errorf("primary exited")
	}
	p.WaitServing(p.URL(), "vslow", 10*time.Second)
}

// TestWorkerKilledIsReplaced: a worker killed with SIGKILL is replaced in
// its slot and the service goes on.
func TestWorkerKilledIsReplaced(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{})
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	var victim, slot int
	for pid, e := range p.LiveWorkers() {
		victim, slot = pid, e.Int0("slot")
		break
	}
	if victim == 0 {
		t.Fatalf("no live worker in the log")
	}
	mark := p.Log.Len()
	if err := signalOurs(victim, syscall.SIGKILL, p.Mark, p.Dir); err != nil {
		t.Fatal(err)
	}
	exited, ok := p.Log.Wait(mark, 10*time.Second, func(e Event) bool {
		return e.Msg == "worker exited" && e.Int0("pid") == victim
	})
	if !ok {
		t.Fatalf("no \"worker exited\" for killed worker %d\n%s", victim, p.Tail(30))
	}
	if s := exited.Str("status"); s != "signal: killed" {
		t.Errorf("\"worker exited\" status = %q, want \"signal: killed\"", s)
	}
	spawned, ok := p.Log.Wait(mark, 10*time.Second, func(e Event) bool {
		return e.Msg == "worker spawned" && e.Int0("slot") == slot && e.Int0("pid") != victim
	})
	if !ok {
		t.Fatalf("no new worker spawned in slot %d\n%s", slot, p.Tail(30))
	}
	newPID := spawned.Int0("pid")
	if _, ok := p.Log.Wait(spawned.Seq, 10*time.Second, func(e Event) bool {
		return e.Msg == "worker ready" && e.Int0("pid") == newPID
	}); !ok {
		t.Fatalf("replacement worker %d never ready\n%s", newPID, p.Tail(30))
	}
	p.WaitServing(p.URL(), "v1", 10*time.Second)

	// New connections after the replacement: none fails, the new worker
	// answers.
	r := loadgen.Start(context.Background(), loadgen.Config{URL: p.URL(), NewConn: 4,
		Duration: 2 * time.Second, MaxRequests: 400, Timeout: 5 * time.Second, Pause: 2 * time.Millisecond})
	res := r.Wait()
	t.Logf("load after replacement: %s", res)
	if res.Failures != 0 {
		t.Errorf("%d requests failed after the replacement: %v %q", res.Failures, res.FailuresByKind, res.FirstErrors)
	}
	if res.PIDs[strconv.Itoa(newPID)] == 0 {
		t.Errorf("replacement worker %d answered none of %d requests: pids %v", newPID, res.Requests, res.PIDs)
	}
	if res.PIDs[strconv.Itoa(victim)] != 0 {
		t.Errorf("killed worker %d still answered", victim)
	}
	if p.Exited() {
		t.Errorf("primary exited")
	}
}

// TestCrashLoopBackoff: workers that keep crashing are restarted with a
// backoff of about 100ms doubling each time — each restart comes no sooner
// than its logged backoff after the crash — and the primary stays up.
func TestCrashLoopBackoff(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{Workers: 1, Server: "crashlater", NoWait: true})
	const want = 6
	var sched []Event
	end := time.Now().Add(20 * time.Second)
	for len(sched) < want && time.Now().Before(end) {
		from := 0
		if len(sched) > 0 {
			from = sched[len(sched)-1].Seq + 1
		}
		ev, ok := p.Log.Wait(from, time.Until(end), isMsg("worker restart scheduled"))
		if !ok {
			break
		}
		sched = append(sched, ev)
	}
	if len(sched) < want {
		t.Fatalf("%d \"worker restart scheduled\" within 20s, want %d\n%s", len(sched), want, p.Tail(40))
	}
	var backoffs []time.Duration
	for _, e := range sched {
		d, ok := e.Duration("backoff")
		if !ok {
			t.Fatalf("\"worker restart scheduled\" without a backoff duration: %s", e.Raw)
		}
		if s, ok := e.Int("slot"); !ok || s != 0 {
			t.Errorf("restart scheduled for slot %v, want 0: %s", e.F["slot"], e.Raw)
		}
		backoffs = append(backoffs, d)
	}
	t.Logf("backoffs: %v", backoffs)
	var nonzero []time.Duration
	for i, d := range backoffs {
		if i > 0 && d < backoffs[i-1] {
			t.Errorf("backoff shrank: %v", backoffs)
		}
		if d > 0 {
			nonzero = append(nonzero, d)
		}
	}
	if len(nonzero) < 3 {
		t.Fatalf("fewer than 3 non-zero backoffs: %v", backoffs)
	}
	// The restarts' actual spacing: from each scheduled restart to the
	// slot's next worker spawned (the primary's timestamps, to the
	// millisecond). A loaded machine only makes it longer.
	var gaps []time.Duration
	for i, e := range sched[:len(sched)-1] {
		spawned, ok := p.Log.Wait(e.Seq+1, 0, func(s Event) bool {
			return s.Msg == "worker spawned" && s.Int0("slot") == 0
		})
		if !ok || spawned.Seq > sched[i+1].Seq {
			t.Fatalf("no worker spawned between two scheduled restarts: %s", e.Raw)
		}
		at, ok1 := e.Time()
		then, ok2 := spawned.Time()
		if !ok1 || !ok2 {
			t.Fatalf("events without a timestamp: %s, %s", e.Raw, spawned.Raw)
		}
		gap := then.Sub(at)
		gaps = append(gaps, gap)
		if gap < backoffs[i]-2*time.Millisecond {
			t.Errorf("restart %d came %v after it was scheduled, before its backoff of %v", i+1, gap, backoffs[i])
		}
	}
	t.Logf("from scheduled to spawned: %v", gaps)
	if nonzero[0] < 50*time.Millisecond || nonzero[0] > 200*time.Millisecond {
		t.Errorf("first non-zero backoff %v, want about 100ms", nonzero[0])
	}
	for i := 1; i < len(nonzero); i++ {
		ratio := float64(nonzero[i]) / float64(nonzero[i-1])
		if ratio < 1.8 || ratio > 2.2 {
			t.Errorf("backoff %v after %v: want it doubled (%v)", nonzero[i], nonzero[i-1], backoffs)
		}
	}
	if p.Exited() {
		t.Errorf("primary exited during the crash loop: %v", p.state)
	}
	if ev, ok := p.Log.Wait(0, 0, isMsg("shutdown started")); ok {
		t.Errorf("primary shut down during the crash loop: %s", ev.Raw)
	}
}

// acceptedBy returns the worker among pids holding the server side of the
// TCP connection from client to server, or 0.
func acceptedBy(pids []int, server, client *net.TCPAddr) int {
	want := func(a *net.TCPAddr) string {
		ip := a.IP.To4()
		return fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], a.Port)
	}
	local, remote := want(server), want(client)
	for _, pid := range pids {
		f, err := os.Open(fmt.Sprintf("/proc/%d/net/tcp", pid))
		if err != nil {
			continue
		}
		inode := ""
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fl := strings.Fields(sc.Text())
			if len(fl) >= 10 && fl[1] == local && fl[2] == remote {
				inode = fl[9]
			}
		}
		f.Close()
		if inode == "" || inode == "0" {
			continue
		}
		links, _ := fdLinks(pid)
		for _, l := range links {
			if l == "socket:["+inode+"]" {
				return pid
			}
		}
	}
	return 0
}

// TestShutdownDrainsInflight: SIGTERM with a slow request in flight lets
// it complete, then the primary exits 0 with nothing left running and the
// port closed.
func TestShutdownDrainsInflight(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{})
	addr := p.Addr()
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	procs := descendants(p.PID)
	if len(procs) < p.Workers {
		t.Fatalf("primary %d has descendants %v, want at least %d workers", p.PID, procs, p.Workers)
	}

	type result struct {
		status int
		body   string
		err    error
	}
	done := make(chan result, 1)
	gotConn := make(chan net.Addr, 1)
	go func() {
		ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
			GotConn: func(i httptrace.GotConnInfo) { gotConn <- i.Conn.LocalAddr() },
		})
		// Long enough to be found in flight: reading /proc/PID/net/tcp
		// of a machine busy with other tests' connections is slow.
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/slow?ms=6000", nil)
		resp, err := freshClient(10 * time.Second).Do(req)
		if err != nil {
			done <- result{err: err}
			return
		}
		defer resp.Body.Close()
		var b strings.Builder
		_, err = bufio.NewReader(resp.Body).WriteTo(&b)
		done <- result{resp.StatusCode, b.String(), err}
	}()
	var client net.Addr
	select {
	case client = <-gotConn:
	case r := <-done:
		t.Fatalf("slow request ended before it was connected: %+v", r)
	case <-time.After(10 * time.Second):
		t.Fatalf("slow request not connected within 10s")
	}
	server, _ := net.ResolveTCPAddr("tcp", addr)
	end := time.Now().Add(5 * time.Second)
	for acceptedBy(procs, server, client.(*net.TCPAddr)) == 0 {
		if time.Now().After(end) {
			t.Fatalf("no worker accepted the slow request's connection within 5s")
		}
		select {
		case r := <-done:
			t.Fatalf("slow request ended before a worker was seen holding it: %+v", r)
		case <-time.After(5 * time.Millisecond):
		}
	}

	p.Signal(p.PID, syscall.SIGTERM)
	select {
	case r := <-done:
		if r.err != nil || r.status != 200 || !strings.HasPrefix(r.body, "v1 ") {
			t.Errorf("in-flight request during shutdown: status %d body %q err %v", r.status, r.body, r.err)
		}
	case <-time.After(15 * time.Second):
		t.Errorf("in-flight request not answered within 15s of SIGTERM")
	}
	st := p.WaitExit(20 * time.Second)
	if st == nil {
		t.Fatalf("primary still running 20s after SIGTERM")
	}
	if st.ExitCode() != 0 {
		t.Errorf("primary exited with %s, want exit status 0", st)
	}
	if _, ok := p.Log.Wait(0, 2*time.Second, isMsg("shutdown finished")); !ok {
		t.Errorf("no \"shutdown finished\" logged")
	}
	if left := waitGone(append(procs, markedPIDs(p.Mark)...), 3*time.Second); len(left) > 0 {
		t.Errorf("processes left after shutdown: %v", left)
	}
	if err := waitRefused(addr, 3*time.Second); err != nil {
		t.Error(err)
	}
	if left := p.TmpEntries(); len(left) > 0 {
		t.Errorf("primary left %v in its TMPDIR after a graceful shutdown", left)
	}
}

// TestPrimaryKilled: when the primary is killed with SIGKILL its workers
// go too, and the port is closed.
func TestPrimaryKilled(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{})
	addr := p.Addr()
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	procs := descendants(p.PID)
	if len(procs) < p.Workers {
		t.Fatalf("primary %d has descendants %v, want at least %d workers", p.PID, procs, p.Workers)
	}
	p.Signal(p.PID, syscall.SIGKILL)
	if st := p.WaitExit(5 * time.Second); st == nil {
		t.Fatalf("primary not gone 5s after SIGKILL")
	}
	if left := waitGone(append(procs, markedPIDs(p.Mark)...), 5*time.Second); len(left) > 0 {
		t.Errorf("workers still running 5s after the primary was killed: %v", left)
	}
	if err := waitRefused(addr, 3*time.Second); err != nil {
		t.Error(err)
	}
}

// TestNoLeaksAfterManyDeploys: 50 deploys leave the primary with as many
// open fds and descendant processes as after the first.
func TestNoLeaksAfterManyDeploys(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{Flags: []string{"--drain-timeout", "2s"}})
	p.DeployOK(30 * time.Second)
	settle := func() (int, int, map[int]string) {
		// Retired workers may still be draining: wait until every one of
		// them has been logged as exited (which the primary does once it
		// has reaped it and closed what it held for it) and the pool size
		// of descendants is left.
		end := time.Now().Add(10 * time.Second)
		for (len(p.LiveWorkers()) != p.Workers || len(descendants(p.PID)) != p.Workers) && time.Now().Before(end) {
			time.Sleep(20 * time.Millisecond)
		}
		links, err := fdLinks(p.PID)
		if err != nil {
			t.Fatal(err)
		}
		return len(links), len(descendants(p.PID)), links
	}
	fds0, procs0, links0 := settle()
	t.Logf("after the first deploy: %d fds, %d descendants", fds0, procs0)

	for i := 0; i < 50; i++ {
		p.DeployOK(30 * time.Second)
	}
	var fds, procs int
	var links map[int]string
	end := time.Now().Add(10 * time.Second)
	for {
		fds, procs, links = settle()
		if (fds == fds0 && procs == procs0) || time.Now().After(end) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("after 51 deploys: %d fds, %d descendants", fds, procs)
	if fds != fds0 {
		t.Errorf("primary has %d open fds after 50 more deploys, %d before; difference by kind: %v\nbefore: %v\nafter:  %v",
			fds, fds0, diffLinks(links0, links), links0, links)
	}
	if procs != procs0 {
		t.Errorf("primary has %d descendants after 50 more deploys, %d before: %v", procs, procs0, descendants(p.PID))
	}
	if p.PIDFromFile() != p.PID || p.Exited() {
		t.Errorf("primary changed or exited")
	}
}

// diffLinks lists the fds of b that a does not have (by target).
func diffLinks(a, b map[int]string) []string {
	count := map[string]int{}
	for _, l := range a {
		count[kindOf(l)]++
	}
	for _, l := range b {
		count[kindOf(l)]--
	}
	var out []string
	for k, n := range count {
		if n != 0 {
			out = append(out, fmt.Sprintf("%s:%+d", k, -n))
		}
	}
	return out
}

// kindOf strips the inode from "socket:[123]" so fds can be compared by
// kind.
func kindOf(link string) string {
	if i := strings.Index(link, ":["); i >= 0 && !strings.HasPrefix(link, "anon_inode") {
		return link[:i]
	}
	return link
}

// TestClosedOutputDoesNotKillPrimary: the reader of the primary's stdout
// and stderr goes away (journald restarted, a pager quit): the primary
// keeps serving and still deploys on HUP, instead of dying of SIGPIPE and
// taking its workers with it.
func TestClosedOutputDoesNotKillPrimary(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bin, server, sock := filepath.Join(dir, "handoff"), filepath.Join(dir, "server"), filepath.Join(dir, "app.sock")
	if err := copyFile(handoffBin, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := copyFile(servers["v1"], server, 0o755); err != nil {
		t.Fatal(err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	mark := newMark(t)
	cmd := exec.Command(bin, "run", "--listen", "unix:"+sock, "--workers", "2", "--ready", "notify", "--", server)
	cmd.Env = append(os.Environ(), markEnv+"="+mark, "TMPDIR="+dir)
	cmd.Stdout, cmd.Stderr = w, w
	if cmd, err = startCmd(cmd); err != nil {
		t.Fatal(err)
	}
	w.Close()
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	t.Cleanup(func() {
		for _, pid := range append(markedPIDs(mark), cmd.Process.Pid) {
			signalOurs(pid, syscall.SIGKILL, mark, dir)
		}
	})
	c := unixClient(sock, 5*time.Second)
	serving := func(version string) {
		t.Helper()
		end := time.Now().Add(20 * time.Second)
		for {
			if code, body, err := get(c, "http://unix/"); err == nil && code == 200 && strings.HasPrefix(body, version+" ") {
				return
			}
			if time.Now().After(end) {
				t.Fatalf("%s not served within 20s", version)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	serving("v1")
	r.Close() // nobody reads the primary's output any more

	if err := copyFile(servers["v2"], server, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := signalOurs(cmd.Process.Pid, syscall.SIGHUP, mark, dir); err != nil {
		t.Fatal(err)
	}
	serving("v2")
	if err := signalOurs(cmd.Process.Pid, syscall.SIGTERM, mark, dir); err != nil {
		t.Fatal(err)
	}
	select {
	case <-waited:
	case <-time.After(30 * time.Second):
		t.Fatal("primary still running 30s after TERM")
	}
	if st := cmd.ProcessState; st.ExitCode() != 0 {
		t.Errorf("primary ended with %s, want exit status 0", st)
	}
	if left := waitGone(markedPIDs(mark), 5*time.Second); len(left) > 0 {
		t.Errorf("processes left running: %v", left)
	}
}
