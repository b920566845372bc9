//go:build linux

package integration

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/internal/loadgen"
)

// soakSelfEvery: in the default soak every soakSelfEvery-th deploy also
// installs a rebuilt handoff binary, so the primary upgrades itself.
const soakSelfEvery = 10

// soakTakeover is the default bound (HANDOFF_SOAK_TAKEOVER) on the time from
// a deploy's SIGHUP until only the new version answers.
const soakTakeover = 1500 * time.Millisecond

// TestSoakRefusedUpgrades: HANDOFF_SOAK_REFUSED deploys of a new handoff
// binary that exits at start are each refused, under load, and leave the
// old primary's open fds and memfd copies where the first one left them,
// no request failing. Skipped unless HANDOFF_SOAK_REFUSED is set ('make
// soak' sets it to 5).
func TestSoakRefusedUpgrades(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("HANDOFF_SOAK_REFUSED"))
	if n <= 0 {
		t.Skip("set HANDOFF_SOAK_REFUSED=N to run N refused self-upgrades")
	}
	p := StartPrimary(t, Options{})
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	p.waitSettled(p.PID, 10*time.Second)
	before := primarySample(t, p.PID)
	load := startLoad(t, p.URL())
	installFile(t, p.Bin, brokenHandoff)
	var after []procSample
	for i := 0; i < n; i++ {
		p.Install([]string{"v2", "v1"}[i%2])
		u := p.Deploy(60 * time.Second)
		if !u.Aborted() || u.Started.Str("kind") != "primary" {
			t.Fatalf("refused upgrade %d: %s, then %s; want a self-upgrade aborted", i+1, u.Started.Raw, u.End.Raw)
		}
		p.waitSettled(p.PID, 10*time.Second)
		after = append(after, primarySample(t, p.PID))
	}
	// What the last refusal held may take a moment to be closed.
	first := after[0]
	last := pollSample(t, p.PID, 5*time.Second, func(s procSample) bool {
		return s.fds <= first.fds && s.memfds <= first.memfds
	})
	after[len(after)-1] = last
	var fds, memfds []string
	for _, s := range after {
		fds, memfds = append(fds, strconv.Itoa(s.fds)), append(memfds, strconv.Itoa(s.memfds))
	}
	t.Logf("primary %d: %d fds (%d memfds) before; after each of %d refused upgrades: fds %s; memfds %s",
		p.PID, before.fds, before.memfds, n, strings.Join(fds, " "), strings.Join(memfds, " "))
	if last.fds > first.fds || last.memfds > first.memfds {
		t.Errorf("refused self-upgrades leak: the primary's fds went from %d (%d memfds) before to %d (%d) after the first refusal and %d (%d) after %d; grown by kind: %v",
			before.fds, before.memfds, first.fds, first.memfds, last.fds, last.memfds, n, diffLinks(first.links, last.links))
	}
	if p.Exited() {
		t.Fatalf("the old primary exited")
	}
	noFailuresSoFar(t, load, "refused self-upgrades")
	checkLoad(t, load, "")
}

// TestSoakDeploys runs HANDOFF_SOAK back-to-back deploys (alternating two
// builds of the test server) with --min-uptime at its default, under 16
// keep-alive and 4 new-connection clients on raw sockets and 16
// new-connection clients of internal/loadgen, all sending POSTs. Every
// 10th deploy also installs a rebuilt handoff binary (another build id),
// so the primary hands over to a new one through tableflip. It is skipped
// unless HANDOFF_SOAK is set: run it with 'make soak'.
//
// It fails on a single failed request; when, after a SIGHUP, the old
// version still answers (or the new one has not answered yet) later than
// HANDOFF_SOAK_TAKEOVER (1.5s); when the primary's open fds or memfds
// (sampled after each deploy, once the old workers and any old primary
// are gone) grow over the second half of the run. It prints a summary and
// writes it to HANDOFF_SOAK_OUT (default bin/soak.md at the module's root).
//
// With HANDOFF_SOAK_PRIMARY set, every deploy also replaces the handoff
// binary, so each one hands over to a new primary. With HANDOFF_SOAK_LIB
// set, the program is examples/hello in library mode, and every deploy is
// a rebuilt binary of it: a new primary each time.
func TestSoakDeploys(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("HANDOFF_SOAK"))
	if n <= 0 {
		t.Skip("set HANDOFF_SOAK=N to run N deploys under load")
	}
	bound := soakTakeover
	if s := os.Getenv("HANDOFF_SOAK_TAKEOVER"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			t.Fatalf("HANDOFF_SOAK_TAKEOVER=%q: want a positive duration such as 1.5s", s)
		}
		bound = d
	}
	lib := os.Getenv("HANDOFF_SOAK_LIB") != ""
	everyPrimary := os.Getenv("HANDOFF_SOAK_PRIMARY") != "" || lib
	opts := Options{DefaultMinUptime: true, Flags: []string{"--drain-timeout", "5s"}}
	mode := "handoff run, testserver"
	versions := []string{"v1", "v2"}
	if lib {
		opts.Lib = "hello-v1"
		mode = "library mode, examples/hello"
	}
	// Two builds of handoff with different build ids, installed in turn.
	var handoffs, handoffSums []string
	if !lib {
		handoffs = []string{handoffBin, soakHandoffBuild(t)}
		handoffSums = []string{fileSHA256(t, handoffs[0]), fileSHA256(t, handoffs[1])}
		if handoffSums[0] == handoffSums[1] {
			t.Fatalf("the rebuilt handoff binary is the same file as the first")
		}
	}

	p := StartPrimary(t, opts)
	p.WaitServing(p.URL(), "v1", 10*time.Second)
	tk := &takeover{}
	raw := startRawLoad(p.Addr(), 16, 4, time.Duration(n)*20*time.Second+2*time.Minute, tk.observe)
	t.Cleanup(func() { raw.Stop() })
	load := loadgen.Start(context.Background(), loadgen.Config{
		URL:         p.URL(),
		NewConn:     16,
		Duration:    time.Duration(n)*20*time.Second + 2*time.Minute,
		MaxRequests: 50_000_000,
		Timeout:     5 * time.Second,
	})
	t.Cleanup(func() { load.Stop() })
	waitRequests(t, load, 100, 10*time.Second)
	raw.waitRequests(t, 100, 10*time.Second)

	s := &soakStats{mode: mode, workers: p.Workers, bound: bound, from: plateauFrom(n, everyPrimary)}
	cur := p.PID
	p.waitSettled(cur, 10*time.Second)
	s.sample(t, cur)
	start := time.Now()
	defer func() {
		s.elapsed = time.Since(start)
		s.loadgen, s.raw = load.Snapshot(), raw.Snapshot()
		s.report(t)
	}()
	for i := 1; i <= n; i++ {
		v := versions[i%2]
		self := everyPrimary || i%soakSelfEvery == 0
		build := (s.selfUpgrades + 1) % 2 // the build of handoff a self-upgrade installs
		switch {
		case lib:
			p.InstallLib("hello-" + v)
		default:
			p.Install(v)
			if self {
				if err := copyFile(handoffs[build], p.Bin, 0o755); err != nil {
					t.Fatal(err)
				}
			}
		}
		mark := p.Log.Len()
		tk.begin(v)
		p.Signal(cur, syscall.SIGHUP)
		u := p.AwaitUpgrade(mark, 2*time.Minute)
		if u.Aborted() {
			t.Fatalf("deploy %d: generation %d aborted: %s\n%s", i, u.Gen, u.End.Raw, p.Tail(60))
		}
		want := "workers"
		if self {
			want = "primary"
		}
		if k := u.Started.Str("kind"); k != want {
			t.Fatalf("deploy %d: kind %q, want %q: %s", i, k, want, u.Started.Raw)
		}
		if d, ok := u.End.Duration("duration"); ok {
			s.deploys = append(s.deploys, d)
		}
		if self {
			cur = p.waitSuccessor(cur, 30*time.Second)
			s.selfUpgrades++
			if !lib {
				if sum := fileSHA256(t, fmt.Sprintf("/proc/%d/exe", cur)); sum != handoffSums[build] {
					t.Fatalf("deploy %d: the new primary %d does not run the handoff build installed (sha256 %s, want %s)", i, cur, sum, handoffSums[build])
				}
			}
		}
		// Only the new generation's workers and the current primary are
		// left: no other version can answer from now on.
		p.waitSettled(cur, 30*time.Second)
		took, old, ok := tk.end(10 * time.Second)
		if !ok {
			t.Fatalf("deploy %d: the load saw no answer of %s within 10s of the deploy's end", i, v)
		}
		s.takeovers, s.oldAnswering = append(s.takeovers, took), append(s.oldAnswering, old)
		if self {
			s.selfTakeovers = append(s.selfTakeovers, took)
		}
		s.done = i
		s.sample(t, cur)
		if f := load.Snapshot(); f.Failures != 0 {
			t.Fatalf("deploy %d of %d: %d failed requests (loadgen): %v %q", i, n, f.Failures, f.FailuresByKind, f.FirstErrors)
		}
		if f := raw.Snapshot(); f.Failures != 0 {
			t.Fatalf("deploy %d of %d: %d failed requests (raw sockets): %v %q", i, n, f.Failures, f.FailuresByKind, f.FirstErrors)
		}
	}
	s.loadgen, s.raw = load.Stop(), raw.Stop()
	for _, r := range []loadgen.Result{s.loadgen, s.raw} {
		if r.Failures != 0 {
			t.Errorf("%d of %d requests failed: %v %q", r.Failures, r.Requests, r.FailuresByKind, r.FirstErrors)
		}
	}
	if late := s.late(); len(late) > 0 {
		t.Errorf("%d of %d deploys: the new version was not the only one answering within %s of the SIGHUP (max %s; p50 %s): deploys %v",
			len(late), len(s.takeovers), bound, pct(s.takeovers, 1), pct(s.takeovers, 0.5), late)
	}
	errs, checked := s.plateauErrors()
	if !checked {
		t.Logf("fd plateau not checked: %d deploys, the check starts after deploy %d", s.done, s.from)
	}
	for _, e := range errs {
		t.Error(e)
	}
	checkInvariant(t, p.Log.Events(), p.Workers)
}

// soakHandoffOnce builds, once per test binary, handoff again with another
// version string: another build id, so the primary sees a new executable.
var soakHandoffOnce struct {
	sync.Once
	path string
	err  error
}

// soakHandoffBuild returns the path of a handoff binary that differs from
// handoffBin in its build id (and its version, "soak").
func soakHandoffBuild(t *testing.T) string {
	t.Helper()
	soakHandoffOnce.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			soakHandoffOnce.err = err
			return
		}
		out := filepath.Join(buildDir, "handoff-soak")
		args := []string{"build", "-ldflags", "-X main.version=soak", "-o", out, "./cmd/handoff"}
		if raceBuild {
			args = slices.Insert(args, 1, "-race")
		}
		cmd := exec.Command("go", args...)
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			soakHandoffOnce.err = fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, b)
			return
		}
		soakHandoffOnce.path = out
	})
	if soakHandoffOnce.err != nil {
		t.Fatal(soakHandoffOnce.err)
	}
	return soakHandoffOnce.path
}

// takeover measures, per deploy, the time from its SIGHUP to the moment
// after which no answer of another version than the deploy's was seen,
// and at least one of the deploy's was.
type takeover struct {
	mu                sync.Mutex
	active            bool
	want              string
	since             time.Time
	lastOld, firstNew time.Time
	newSeen           chan struct{} // closed at the first answer of want
}

// begin starts the measure of a deploy of version, whose SIGHUP is sent
// right after.
func (k *takeover) begin(version string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.active, k.want, k.since = true, version, time.Now()
	k.lastOld, k.firstNew = time.Time{}, time.Time{}
	k.newSeen = make(chan struct{})
}

// observe is called at each answer, with its version.
func (k *takeover) observe(at time.Time, version string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.active {
		return
	}
	if version != k.want {
		k.lastOld = at
		return
	}
	if k.firstNew.IsZero() {
		k.firstNew = at
		close(k.newSeen)
	}
}

// end waits up to d for an answer of the new version and returns the
// takeover (SIGHUP → only the new version answering) and how long an
// old version answered after the SIGHUP (0 if it never did). Call it once
// no old process is left.
func (k *takeover) end(d time.Duration) (took, old time.Duration, ok bool) {
	k.mu.Lock()
	ch := k.newSeen
	k.mu.Unlock()
	select {
	case <-ch:
	case <-time.After(d):
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.active = false
	if k.firstNew.IsZero() {
		return 0, 0, false
	}
	last := k.firstNew
	if k.lastOld.After(last) {
		last = k.lastOld
	}
	if !k.lastOld.IsZero() {
		old = k.lastOld.Sub(k.since)
	}
	return last.Sub(k.since), old, true
}

// rawLoad is HTTP/1.1 load on raw TCP sockets: each client writes a POST
// by hand and reads the answer with http.ReadResponse, so nothing between
// the test and the server retries or hides a failure. A keep-alive client
// reuses its connection until an answer says "Connection: close" or an
// error ends it; a new-connection client dials for each request. Every
// answer's version (the first word of its body) goes to observe.
type rawLoad struct {
	addr    string
	observe func(time.Time, string)
	ctx     context.Context
	cancel  context.CancelFunc
	start   time.Time
	wg      sync.WaitGroup
	reqs    atomic.Int64
	fails   atomic.Int64

	mu          sync.Mutex
	kinds       map[string]int64
	firstErrors []string
	versions    map[string]int64
}

// rawMaxRequests bounds a rawLoad run, with its duration.
const rawMaxRequests = 50_000_000

func startRawLoad(addr string, keepAlive, newConn int, d time.Duration, observe func(time.Time, string)) *rawLoad {
	r := &rawLoad{addr: addr, observe: observe, start: time.Now(), kinds: map[string]int64{}, versions: map[string]int64{}}
	r.ctx, r.cancel = context.WithTimeout(context.Background(), d)
	for i := 0; i < keepAlive+newConn; i++ {
		r.wg.Add(1)
		go r.client(i >= keepAlive)
	}
	return r
}

var rawBody = []byte("soak payload: a POST on a raw socket\n")

func (r *rawLoad) client(newConn bool) {
	defer r.wg.Done()
	var conn net.Conn
	var br *bufio.Reader
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	closeHeader := ""
	if newConn {
		closeHeader = "Connection: close\r\n"
	}
	req := []byte(fmt.Sprintf("POST / HTTP/1.1\r\nHost: soak\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n%s",
		len(rawBody), closeHeader, rawBody))
	for r.ctx.Err() == nil && r.reqs.Load() < rawMaxRequests {
		if conn == nil {
			c, err := net.DialTimeout("tcp", r.addr, 5*time.Second)
			if err != nil {
				r.fail(err)
				time.Sleep(10 * time.Millisecond)
				continue
			}
			conn, br = c, bufio.NewReader(c)
		}
		version, keep, err := r.one(conn, br, req)
		if err != nil {
			r.fail(err)
		} else {
			r.ok(version)
		}
		if err != nil || !keep || newConn {
			conn.Close()
			conn = nil
		}
	}
}

// one sends req on conn and reads the answer.
func (r *rawLoad) one(conn net.Conn, br *bufio.Reader, req []byte) (version string, keep bool, err error) {
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write(req); err != nil {
		return "", false, err
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return "", false, err
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	if err != nil {
		return "", false, fmt.Errorf("reading response body (status %d): %w", resp.StatusCode, err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", false, fmt.Errorf("status_%d: %q", resp.StatusCode, bytes.TrimSpace(b))
	}
	if f := strings.Fields(string(b)); len(f) > 0 {
		version = f[0]
	}
	return version, !resp.Close, nil
}

func (r *rawLoad) ok(version string) {
	now := time.Now()
	r.reqs.Add(1)
	r.observe(now, version)
	r.mu.Lock()
	r.versions[version]++
	r.mu.Unlock()
}

func (r *rawLoad) fail(err error) {
	r.reqs.Add(1)
	r.fails.Add(1)
	kind := loadgen.Classify(err)
	if strings.HasPrefix(err.Error(), "status_") {
		kind, _, _ = strings.Cut(err.Error(), ":")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.kinds[kind]++
	if len(r.firstErrors) < 10 {
		r.firstErrors = append(r.firstErrors, kind+": "+err.Error())
	}
}

// Snapshot returns the figures so far, in loadgen's form (no latencies).
func (r *rawLoad) Snapshot() loadgen.Result {
	res := loadgen.Result{Requests: r.reqs.Load(), Failures: r.fails.Load(), Elapsed: time.Since(r.start)}
	r.mu.Lock()
	defer r.mu.Unlock()
	res.FailuresByKind = maps.Clone(r.kinds)
	res.FirstErrors = append([]string(nil), r.firstErrors...)
	res.Versions = maps.Clone(r.versions)
	return res
}

// Stop stops the clients, waits for the requests in flight (each bounded
// by 5s) and returns the totals.
func (r *rawLoad) Stop() loadgen.Result {
	r.cancel()
	r.wg.Wait()
	return r.Snapshot()
}

// waitRequests waits until at least n more requests completed.
func (r *rawLoad) waitRequests(t *testing.T, n int64, d time.Duration) {
	t.Helper()
	from := r.reqs.Load()
	waitUntil(t, d, fmt.Sprintf("%d requests on raw sockets", n), func() bool { return r.reqs.Load() >= from+n })
}

// procSample is what the soak watches of the primary.
type procSample struct {
	pid, fds, memfds int
	rssKiB           int64
	links            map[int]string
}

// primarySample reads pid's open fds (and how many are memfds) and its
// resident memory.
func primarySample(t *testing.T, pid int) procSample {
	t.Helper()
	links, err := fdLinks(pid)
	if err != nil {
		t.Fatalf("fds of primary %d: %v", pid, err)
	}
	s := procSample{pid: pid, fds: len(links), links: links}
	for _, l := range links {
		if strings.HasPrefix(l, "/memfd:") {
			s.memfds++
		}
	}
	if st, ok := readStatus(pid); ok {
		kb, _ := strconv.ParseInt(strings.TrimSuffix(st["VmRSS"], " kB"), 10, 64)
		s.rssKiB = kb
	}
	return s
}

// pollSample samples pid until ok holds or d has passed, and returns the
// last sample: an fd that is being closed is not counted as a leak.
func pollSample(t *testing.T, pid int, d time.Duration, ok func(procSample) bool) procSample {
	t.Helper()
	end := time.Now().Add(d)
	for {
		s := primarySample(t, pid)
		if ok(s) || time.Now().After(end) {
			return s
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// soakStats gathers a soak's figures.
type soakStats struct {
	mode         string
	workers      int
	bound        time.Duration
	from         int // the deploy from which on fds must not grow
	done         int
	selfUpgrades int
	elapsed      time.Duration
	deploys      []time.Duration // "upgrade finished" durations
	takeovers    []time.Duration
	// selfTakeovers are the takeovers of the self-upgrades alone.
	selfTakeovers []time.Duration
	oldAnswering  []time.Duration
	samples       []procSample // [0] before the first deploy, then one per deploy
	loadgen, raw  loadgen.Result
}

// plateauFrom is the deploy from which on the primary's fds must not
// grow: past the first half of n deploys, and at least two deploys after
// the first self-upgrade (the primary may hold more, once, after the
// generation it pins for roll-back and after what tableflip handed it).
func plateauFrom(n int, everyPrimary bool) int {
	first := soakSelfEvery
	if everyPrimary {
		first = 1
	}
	if n < first {
		return n/2 + 1
	}
	return max(n/2+1, first+2)
}

// sample records the primary pid after a deploy (samples[i] after deploy
// i, [0] before the first). From s.from on, a sample above what the
// deploys before reached is taken again for up to 5s, so that an fd
// being closed is not taken for a leak.
func (s *soakStats) sample(t *testing.T, pid int) {
	t.Helper()
	if len(s.samples) >= s.from {
		base := s.plateauBase()
		s.samples = append(s.samples, pollSample(t, pid, 5*time.Second, func(x procSample) bool {
			return x.fds <= base.fds && x.memfds <= base.memfds
		}))
		return
	}
	s.samples = append(s.samples, primarySample(t, pid))
}

// plateauBase returns the highest fd and memfd counts of the samples
// before s.from.
func (s *soakStats) plateauBase() procSample {
	var base procSample
	for _, x := range s.samples[:min(s.from, len(s.samples))] {
		base.fds, base.memfds = max(base.fds, x.fds), max(base.memfds, x.memfds)
	}
	return base
}

// plateauErrors says where the primary's fds or memfds from s.from on
// exceed what the deploys before reached (nil: at a plateau, or too few
// deploys to tell: checked is then false).
func (s *soakStats) plateauErrors() (errs []string, checked bool) {
	if s.from >= len(s.samples) {
		return nil, false
	}
	base := s.plateauBase()
	for i, x := range s.samples[s.from:] {
		if x.fds > base.fds || x.memfds > base.memfds {
			errs = append(errs, fmt.Sprintf("after deploy %d the primary %d has %d fds (%d memfds), more than the most before deploy %d, %d (%d); grown by kind since the first sample: %v",
				s.from+i, x.pid, x.fds, x.memfds, s.from, base.fds, base.memfds, diffLinks(s.samples[0].links, x.links)))
		}
	}
	return errs, true
}

// late lists the deploys (from 1) whose takeover passed the bound.
func (s *soakStats) late() []int {
	var out []int
	for i, d := range s.takeovers {
		if d > s.bound {
			out = append(out, i+1)
		}
	}
	return out
}

// pct returns the p-quantile (0 < p <= 1) of ds, nearest rank.
func pct(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s))*p+0.999999) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// firstMidLastMax formats the first, middle, last and highest of xs.
func firstMidLastMax(xs []float64, format string) string {
	if len(xs) == 0 {
		return "-"
	}
	var out []string
	for _, x := range []float64{xs[0], xs[len(xs)/2], xs[len(xs)-1], slices.Max(xs)} {
		out = append(out, fmt.Sprintf(format, x))
	}
	return strings.Join(out, " / ")
}

// report prints the summary table and writes it to HANDOFF_SOAK_OUT
// (default bin/soak.md at the module's root).
func (s *soakStats) report(t *testing.T) {
	t.Helper()
	var fds, memfds, rss []float64
	for _, x := range s.samples {
		fds, memfds, rss = append(fds, float64(x.fds)), append(memfds, float64(x.memfds)), append(rss, float64(x.rssKiB)/1024)
	}
	ms := func(ds []time.Duration) string {
		return fmt.Sprintf("%s / %s / %s", pct(ds, 1).Round(time.Millisecond), pct(ds, 0.5).Round(time.Millisecond), pct(ds, 0.99).Round(time.Millisecond))
	}
	per := time.Duration(0)
	if s.done > 0 {
		per = s.elapsed / time.Duration(s.done)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "| soak (%s, %d workers, --min-uptime default) | figure |\n| --- | --- |\n", s.mode, s.workers)
	row := func(k, format string, a ...any) { fmt.Fprintf(&b, "| %s | %s |\n", k, fmt.Sprintf(format, a...)) }
	row("deploys", "%d (%d self-upgrades)", s.done, s.selfUpgrades)
	row("wall time", "%s (%s a deploy; 1,000 deploys ≈ %s)", s.elapsed.Round(time.Second), per.Round(time.Millisecond), (per * 1000).Round(time.Minute))
	row("requests", "%d (raw sockets %d, loadgen %d)", s.raw.Requests+s.loadgen.Requests, s.raw.Requests, s.loadgen.Requests)
	row("failed", "%d", s.raw.Failures+s.loadgen.Failures)
	row("takeover: SIGHUP → only the new version answers, max / p50 / p99", "%s (bound %s; %d over)", ms(s.takeovers), s.bound, len(s.late()))
	row("of which self-upgrades, max / p50 / p99", "%s", ms(s.selfTakeovers))
	row("an old version still answering after SIGHUP, max / p50 / p99", "%s", ms(s.oldAnswering))
	row("deploy: SIGHUP → \"upgrade finished\", max / p50 / p99", "%s", ms(s.deploys))
	row("primary's fds, first / mid / last / max", "%s", firstMidLastMax(fds, "%.0f"))
	row("primary's memfds, first / mid / last / max", "%s", firstMidLastMax(memfds, "%.0f"))
	row("primary's RSS, first / mid / last / max", "%s", firstMidLastMax(rss, "%.1f MiB"))
	var series []string
	for _, x := range s.samples {
		series = append(series, fmt.Sprintf("%d/%d", x.fds, x.memfds))
	}
	t.Logf("the primary's fds/memfds before the first deploy, then after each: %s", strings.Join(series, " "))
	t.Logf("soak summary:\n%s", b.String())
	out := os.Getenv("HANDOFF_SOAK_OUT")
	if out == "" {
		root, err := moduleRoot()
		if err != nil {
			t.Errorf("summary not written: %v", err)
			return
		}
		out = filepath.Join(root, "bin", "soak.md")
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		t.Errorf("summary not written: %v", err)
		return
	}
	if err := os.WriteFile(out, []byte(b.String()), 0o644); err != nil {
		t.Errorf("summary not written: %v", err)
		return
	}
	t.Logf("summary written to %s", out)
}

// TestSoakMeasures checks the soak's own measures on made-up figures: the
// takeover runs to the last answer of the old version or the first of the
// new, whichever is later; the fd check lets the primary's fds rise once,
// at the first self-upgrade, and catches a slow leak after it.
func TestSoakMeasures(t *testing.T) {
	t.Parallel()
	k := &takeover{}
	k.begin("v2")
	at := k.since
	k.observe(at.Add(100*time.Millisecond), "v1")
	k.observe(at.Add(200*time.Millisecond), "v2")
	k.observe(at.Add(300*time.Millisecond), "v1")
	k.observe(at.Add(400*time.Millisecond), "v2")
	if took, old, ok := k.end(time.Second); !ok || took != 300*time.Millisecond || old != 300*time.Millisecond {
		t.Errorf("old answers until 300ms, new from 200ms: takeover %s, old %s, %v; want 300ms, 300ms", took, old, ok)
	}
	k.begin("v1")
	k.observe(k.since.Add(50*time.Millisecond), "v1")
	if took, old, ok := k.end(time.Second); !ok || took != 50*time.Millisecond || old != 0 {
		t.Errorf("only new answers, the first at 50ms: takeover %s, old %s, %v; want 50ms, 0", took, old, ok)
	}
	k.begin("v2")
	k.observe(k.since.Add(50*time.Millisecond), "v1")
	if _, _, ok := k.end(10 * time.Millisecond); ok {
		t.Errorf("no answer of the new version: want no takeover")
	}

	samples := func(fds ...int) *soakStats {
		s := &soakStats{from: plateauFrom(len(fds)-1, false)}
		for _, n := range fds {
			s.samples = append(s.samples, procSample{fds: n, memfds: 1, links: map[int]string{}})
		}
		return s
	}
	// 30 deploys, the 10th, 20th and 30th self-upgrades: 24 fds, 26 once
	// a previous generation is pinned, 30 from the first self-upgrade on.
	flat := []int{24}
	for i := 1; i <= 30; i++ {
		flat = append(flat, map[bool]int{true: 26, false: 30}[i < 10])
	}
	if errs, checked := samples(flat...).plateauErrors(); !checked || len(errs) > 0 {
		t.Errorf("a plateau from the first self-upgrade on: %v (checked %v), want no error", errs, checked)
	}
	leak := slices.Clone(flat)
	for i := 16; i <= 30; i++ {
		leak[i] += (i - 15) / 5 // one more fd every 5 deploys
	}
	if errs, _ := samples(leak...).plateauErrors(); len(errs) == 0 {
		t.Errorf("an fd more every 5 deploys over the second half: no error")
	}
	if _, checked := samples(flat[:12]...).plateauErrors(); checked {
		t.Errorf("11 deploys (the second half would start after deploy 12): checked")
	}
}
