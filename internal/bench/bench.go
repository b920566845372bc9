// Package bench measures what handoff costs and how it holds up, side by
// side with the same server run directly, restarted naively (stop, then
// start) and upgraded by the pattern of tableflip's README. The load comes
// from internal/loadgen, which counts every failed request (non-replayable
// POSTs, no hidden retries).
//
// Run drives real processes on loopback: the handoff CLI and the bench
// server (internal/bench/benchserver), both built beforehand. Figures that
// compare two set-ups are taken in the same run, interleaved round by
// round, and reported as medians, because the machines this runs on are
// noisy. cmd/bench prints the tables and writes them as markdown
// (docs/BENCHMARKS.md); the smoke test runs it all at tiny sizes.
package bench

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"sort"
	"time"

	"github.com/handoff-dev/handoff/internal/loadgen"
)

// Config sizes a benchmark run. Zero fields take Full's values.
type Config struct {
	Handoff string // the handoff CLI
	Server  string // the bench server
	Hello   string // examples/hello (library mode), optional: compared too when set
	Node    string // the node executable of benchmark 9; "" looks "node" up in PATH
	Dir     string // a private directory for pid files

	Rounds      int           // rounds of benchmark 1 (medians are reported)
	Slice       time.Duration // load on one set-up in one round of benchmark 1
	Steady      time.Duration // length of one steady-state measurement of benchmark 6
	Warmup      time.Duration // load before a measurement starts, not counted
	Clients     int           // concurrent clients of every load
	Upgrades    int           // upgrades per disruption run
	DisruptRuns int           // disruption runs per system and load
	Gap         time.Duration // steady load before, between and after upgrades
	Workers     []int         // worker counts of the upgrade-duration benchmark
	Deploys     int           // deploys per worker count
	ReadyDelay  time.Duration // the slow app's time to get ready
	Balance     []int         // worker counts of the balance benchmark
	Reloads     int           // dev-loop reloads
	OutputLines int           // lines each worker writes in the worker-output benchmark
	Starts      int           // worker starts per mode of the adoption benchmark
	// ClusterRounds are the rounds of the Node-cluster benchmark (medians
	// are reported); each loads every set-up for Steady.
	ClusterRounds int

	// Only names the benchmarks to run (overhead, disruption, scaling,
	// surge, devloop, balance, output, adoption, cluster); empty runs them all. The primary's cost comes
	// from overhead and scaling.
	Only []string

	Progress io.Writer // one line per step; nil for none
}

// Names of the benchmarks, for Config.Only.
var Names = []string{"overhead", "disruption", "scaling", "surge", "devloop", "balance", "output", "adoption", "cluster"}

// Full is the configuration of 'make bench'.
var Full = Config{
	Rounds: 30, Slice: 700 * time.Millisecond, Steady: 3 * time.Second, Warmup: 150 * time.Millisecond, Clients: 64,
	Upgrades: 10, DisruptRuns: 3, Gap: time.Second, Workers: []int{1, 2, 4, 8, 16}, Deploys: 3,
	ReadyDelay: 500 * time.Millisecond, Balance: []int{2, 4}, Reloads: 10, OutputLines: 500_000, Starts: 30,
	ClusterRounds: 3,
}

// Quick is the configuration of 'make bench BENCH_QUICK=1'.
var Quick = Config{
	Rounds: 5, Slice: 500 * time.Millisecond, Steady: 2 * time.Second, Warmup: 100 * time.Millisecond, Clients: 64,
	Upgrades: 3, DisruptRuns: 1, Gap: 500 * time.Millisecond, Workers: []int{1, 2, 4}, Deploys: 1,
	ReadyDelay: 500 * time.Millisecond, Balance: []int{2}, Reloads: 3, OutputLines: 100_000, Starts: 10,
	ClusterRounds: 1,
}

func (c *Config) fill() {
	d := Full
	c.Rounds = cmp.Or(c.Rounds, d.Rounds)
	c.Slice = cmp.Or(c.Slice, d.Slice)
	c.Steady = cmp.Or(c.Steady, d.Steady)
	c.Warmup = cmp.Or(c.Warmup, d.Warmup)
	c.Clients = cmp.Or(c.Clients, d.Clients)
	c.Upgrades = cmp.Or(c.Upgrades, d.Upgrades)
	c.DisruptRuns = cmp.Or(c.DisruptRuns, d.DisruptRuns)
	c.Gap = cmp.Or(c.Gap, d.Gap)
	c.Deploys = cmp.Or(c.Deploys, d.Deploys)
	c.ReadyDelay = cmp.Or(c.ReadyDelay, d.ReadyDelay)
	c.Reloads = cmp.Or(c.Reloads, d.Reloads)
	c.OutputLines = cmp.Or(c.OutputLines, d.OutputLines)
	c.Starts = cmp.Or(c.Starts, d.Starts)
	c.ClusterRounds = cmp.Or(c.ClusterRounds, d.ClusterRounds)
	if len(c.Workers) == 0 {
		c.Workers = d.Workers
	}
	if len(c.Balance) == 0 {
		c.Balance = d.Balance
	}
	if c.Progress == nil {
		c.Progress = io.Discard
	}
}

// Table is one block of results.
type Table struct {
	Title  string
	Header []string
	Rows   [][]string
	Notes  []string
}

// Report is the outcome of Run.
type Report struct {
	Machine Machine
	Config  Config
	Started time.Time
	Took    time.Duration
	// The machine's load average (1, 5, 15 minutes) when the run started
	// and ended: other work on the machine skews every figure.
	LoadStart, LoadEnd string
	Tables             []Table
	Verdicts           []Verdict // the targets, met or not
}

// Verdict is a target and whether this run met it.
type Verdict struct {
	Target   string
	Measured string
	Met      bool
	Skipped  bool
}

// Run runs every benchmark and returns the report; it stops at the first
// benchmark that cannot run (a process that does not start, an upgrade
// that aborts).
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg.fill()
	r := &Report{Machine: ReadMachine(), Config: cfg, Started: time.Now(), LoadStart: loadAvg()}
	b := &bencher{cfg: cfg, r: r}
	steps := []struct {
		key, name string
		fn        func(context.Context) error
	}{
		{"overhead", "steady-state overhead and the primary's cost under load", b.overhead},
		{"disruption", "deploy disruption", b.disruption},
		{"scaling", "upgrade duration against workers, and the primary's cost per worker", b.scaling},
		{"surge", "upgrade duration with --surge K, and what HTTP probes cost", b.surge},
		{"devloop", "dev loop", b.devLoop},
		{"balance", "balance across workers", b.balance},
		{"output", "worker output", b.output},
		{"adoption", "bind adoption: a worker's start", b.adoption},
		{"cluster", "balance with CPU-bound workers: handoff against Node's cluster", b.cluster},
	}
	for _, s := range steps {
		if len(cfg.Only) > 0 && !slices.Contains(cfg.Only, s.key) {
			continue
		}
		b.progress("== %s", s.name)
		if err := s.fn(ctx); err != nil {
			return r, fmt.Errorf("%s: %w", s.name, err)
		}
	}
	b.primaryTable()
	// In the order of their numbers, whatever order they ran in.
	sort.SliceStable(r.Tables, func(i, j int) bool { return r.Tables[i].Title < r.Tables[j].Title })
	r.Took = time.Since(r.Started)
	r.LoadEnd = loadAvg()
	return r, nil
}

type bencher struct {
	cfg Config
	r   *Report
	// The primary's cost, gathered along the way.
	loadCPU  []float64 // share of one core the primary used under load
	loadRSS  []int64
	idle     []idleSample
	deployMs []float64 // primary CPU per deploy
}

type idleSample struct {
	workers int
	rss     int64
	cpu     float64 // share of one core while idle
}

func (b *bencher) progress(format string, a ...any) {
	fmt.Fprintf(b.cfg.Progress, "bench: "+format+"\n", a...)
}

func (b *bencher) load(ctx context.Context, addr string, newConn bool, d time.Duration) *loadgen.Run {
	cfg := loadgen.Config{URL: "http://" + addr + "/", Duration: d, MaxRequests: math.MaxInt64}
	if newConn {
		cfg.NewConn = b.cfg.Clients
	} else {
		cfg.KeepAlive = b.cfg.Clients
	}
	return loadgen.Start(ctx, cfg)
}

// measure warms addr up, then loads it for cfg.Steady.
func (b *bencher) measure(ctx context.Context, addr string, newConn bool) loadgen.Result {
	b.load(ctx, addr, newConn, b.cfg.Warmup).Wait()
	return b.load(ctx, addr, newConn, b.cfg.Steady).Wait()
}

// 1. Steady-state overhead (and item 5's figures under load).
func (b *bencher) overhead(ctx context.Context) error {
	setups := b.overheadSetups()
	// Every set-up is started once and stays up (idle, it costs nothing);
	// the load moves from one to the next, round after round, so that a
	// drift in the machine's load hits them all alike.
	rig := &overheadRig{setups: setups, addrs: make([]string, len(setups)),
		prims: make([]*primary, len(setups)), pids: make([][]int, len(setups))}
	defer rig.stop()
	for i := range setups {
		if err := b.startOverheadSetup(ctx, rig, i); err != nil {
			return err
		}
	}
	samples := b.overheadRounds(ctx, rig)
	b.overheadTable(setups, samples)
	return nil
}

// overheadSetup is one set-up of benchmark 1.
type overheadSetup struct {
	name    string
	workers int // 0: direct
	library bool
	procs1  bool // GOMAXPROCS=1 in every process
	// flags go to handoff, args to the server: bind adoption.
	flags, args []string
}

// overheadSample is one set-up's figures in one round of benchmark 1.
type overheadSample struct {
	rps      float64
	p50, p99 time.Duration
	failures int64
	requests int64
	cpu      time.Duration // of the server's processes, primary included
}

// overheadSetups are the set-ups benchmark 1 compares, direct first.
func (b *bencher) overheadSetups() []overheadSetup {
	setups := []overheadSetup{
		{name: "direct (one process)"},
		{name: "handoff, 1 worker", workers: 1},
		{name: "handoff, 2 workers", workers: 2},
		// Not a target: it tells whether what 2 workers cost beyond 1
		// comes from two Go runtimes each scheduling for every core.
		{name: "handoff, 2 workers, GOMAXPROCS=1", workers: 2, procs1: true},
		// The rows above run with --adopt-bind auto, the default: their
		// workers take LISTEN_FDS under the bind filter. These two tell
		// what the filter costs, and what a server binding its own port
		// (adopted) gets.
		{name: "handoff, 2 workers, --adopt-bind off", workers: 2, flags: []string{"--adopt-bind", "off"}},
		{name: "handoff, 2 workers, the server binds :$PORT (adopted)", workers: 2,
			flags: []string{"--adopt-bind", "on"}, args: []string{"--bind"}},
	}
	if b.cfg.Hello != "" {
		setups = append(setups, overheadSetup{name: "library mode (examples/hello), 2 workers", workers: 2, library: true})
	}
	return setups
}

// overheadRig is benchmark 1's set-ups, started: by set-up, the address
// it serves on, its primary (nil for direct), every process of it.
type overheadRig struct {
	setups []overheadSetup
	addrs  []string
	prims  []*primary
	pids   [][]int
	stops  []func() // in the order started
}

// stop stops every set-up started, the last started first.
func (r *overheadRig) stop() {
	for i := len(r.stops) - 1; i >= 0; i-- {
		r.stops[i]()
	}
}

// startOverheadSetup starts set-up i of rig and waits until it answers.
func (b *bencher) startOverheadSetup(ctx context.Context, rig *overheadRig, i int) error {
	s := rig.setups[i]
	if s.workers > 0 {
		p, addr, err := b.startOverheadPrimary(ctx, s)
		if err != nil {
			return err
		}
		rig.stops = append(rig.stops, p.stop)
		rig.prims[i], rig.addrs[i] = p, addr
		rig.pids[i] = append(p.workerPIDs(), p.pid())
		return nil
	}
	addr, err := freeAddr()
	if err != nil {
		return err
	}
	srv, err := startServer(b.cfg.Server, "--listen", addr)
	if err != nil {
		return err
	}
	rig.stops = append(rig.stops, func() { srv.stop(sigTERM) })
	if err := waitAnswer(ctx, addr, time.Minute, func(string) bool { return true }); err != nil {
		return fmt.Errorf("%w (server: %s)", err, srv.stderr)
	}
	rig.addrs[i] = addr
	rig.pids[i] = []int{srv.cmd.Process.Pid}
	return nil
}

// startOverheadPrimary starts the handoff set-up s: the CLI, with its
// flags and GOMAXPROCS=1 if asked for, or library mode.
func (b *bencher) startOverheadPrimary(ctx context.Context, s overheadSetup) (*primary, string, error) {
	switch {
	case s.library:
		return startLibrary(ctx, b.cfg.Hello, s.workers)
	case s.procs1:
		cmd := handoffCmd(b.cfg.Handoff, nil, b.cfg.Server, s.workers)
		cmd.Env = append(os.Environ(), "GOMAXPROCS=1")
		return startPrimaryCmd(ctx, cmd)
	}
	return startPrimaryWith(ctx, b.cfg.Handoff, s.flags, b.cfg.Server, s.workers, s.args...)
}

// overheadRounds loads each set-up of rig for a slice, round after round,
// and returns the samples by set-up.
func (b *bencher) overheadRounds(ctx context.Context, rig *overheadRig) [][]overheadSample {
	samples := make([][]overheadSample, len(rig.setups))
	for round := 1; round <= b.cfg.Rounds; round++ {
		// Each round starts with another set-up, so that none always runs
		// first (or last).
		for k := range rig.setups {
			i := (k + round - 1) % len(rig.setups)
			sm := b.overheadSlice(ctx, rig, i)
			samples[i] = append(samples[i], sm)
			b.progress("round %d %-22s %8.0f req/s p50 %-9v p99 %-9v failed %d", round, rig.setups[i].name, sm.rps, sm.p50, sm.p99, sm.failures)
		}
	}
	return samples
}

// overheadSlice warms set-up i of rig up, then loads it for cfg.Slice, and
// returns what that measured; the CLI's primary's CPU and RSS under the
// load go to the primary's cost.
func (b *bencher) overheadSlice(ctx context.Context, rig *overheadRig, i int) overheadSample {
	p := rig.prims[i]
	if rig.setups[i].library {
		p = nil // its primary is the application too: not the CLI's cost
	}
	b.load(ctx, rig.addrs[i], false, b.cfg.Warmup).Wait()
	var cpu0 time.Duration
	if p != nil {
		cpu0, _ = procCPU(p.pid())
	}
	all0 := sumCPU(rig.pids[i])
	res := b.load(ctx, rig.addrs[i], false, b.cfg.Slice).Wait()
	all1 := sumCPU(rig.pids[i])
	if p != nil {
		cpu1, _ := procCPU(p.pid())
		b.loadCPU = append(b.loadCPU, (cpu1-cpu0).Seconds()/res.Elapsed.Seconds())
		if rss, err := procRSS(p.pid()); err == nil {
			b.loadRSS = append(b.loadRSS, rss)
		}
	}
	return overheadSample{rps: float64(res.Requests) / res.Elapsed.Seconds(), p50: res.P50, p99: res.P99,
		failures: res.Failures, requests: res.Requests, cpu: all1 - all0}
}

// overheadTotals is one set-up's figures over all rounds of benchmark 1.
type overheadTotals struct {
	rps, ratio       []float64 // ratio: to direct, round by round
	p50, p99         []time.Duration
	failed, requests int64
	cpu              time.Duration
}

// totalOverhead sums up a set-up's samples, and those of direct, taken
// in the same rounds.
func totalOverhead(samples, direct []overheadSample) overheadTotals {
	var tot overheadTotals
	for round, sm := range samples {
		tot.rps = append(tot.rps, sm.rps)
		tot.ratio = append(tot.ratio, sm.rps/direct[round].rps)
		tot.p50, tot.p99 = append(tot.p50, sm.p50), append(tot.p99, sm.p99)
		tot.failed += sm.failures
		tot.requests += sm.requests
		tot.cpu += sm.cpu
	}
	return tot
}

// overheadTable adds benchmark 1's table, from the samples of each of
// setups, and its verdict.
func (b *bencher) overheadTable(setups []overheadSetup, samples [][]overheadSample) {
	t := Table{
		Title:  "1. Steady-state overhead (keep-alive load)",
		Header: []string{"set-up", "req/s", "vs direct", "vs direct, middle half of rounds", "p50", "p99", "failed", "server CPU per request", "vs direct"},
		Notes: []string{fmt.Sprintf("%d keep-alive clients, %v per set-up and round after %v of warm-up; medians of %d rounds. The set-ups run side by side for the whole benchmark and the load moves from one to the next in short slices, each round starting with a different one, so that a drift in the machine's load hits them alike; \"vs direct\" is the median of the per-round ratios to the direct server, and its middle half (25th to 75th percentile) shows how much one round's ratio moves.",
			b.cfg.Clients, b.cfg.Slice, b.cfg.Warmup, b.cfg.Rounds)},
	}
	var worst float64 = math.Inf(1)
	// CPU per request over all rounds; [0] is direct.
	cpuPerReq := make([]time.Duration, len(setups))
	for i, s := range setups {
		tot := totalOverhead(samples[i], samples[0]) // samples[0] is direct
		cpuVs := "1"
		if tot.requests > 0 {
			cpuPerReq[i] = tot.cpu / time.Duration(tot.requests)
		}
		if i > 0 && cpuPerReq[i] > 0 {
			cpuVs = fmt.Sprintf("%.3f", float64(cpuPerReq[i])/float64(cpuPerReq[0]))
		}
		vs, iqr := "1", "—"
		if i > 0 {
			iqr = fmt.Sprintf("%.2f – %.2f", quantile(tot.ratio, 0.25), quantile(tot.ratio, 0.75))
			m := median(tot.ratio)
			if !s.procs1 {
				worst = math.Min(worst, m)
			}
			vs = fmt.Sprintf("%.3f", m)
		}
		t.Rows = append(t.Rows, []string{s.name, fmt.Sprintf("%.0f", median(tot.rps)), vs, iqr,
			fmtDur(medianDur(tot.p50)), fmtDur(medianDur(tot.p99)), fmt.Sprint(tot.failed), fmtDur(cpuPerReq[i]), cpuVs})
	}
	t.Notes = append(t.Notes, "The handoff rows run with --adopt-bind auto (the default) unless they say otherwise: the workers take their socket from LISTEN_FDS, under the seccomp filter that sends their bind() and listen() calls to the primary, which every system call of theirs passes through. The --adopt-bind off row has no filter; in the last row the server binds :$PORT itself and is given the primary's socket (bind adoption), then serves exactly as a LISTEN_FDS worker does.")
	t.Notes = append(t.Notes, "The GOMAXPROCS=1 row is not a target: it runs each worker's Go runtime on one thread, to tell whether what 2 workers cost beyond 1 comes from two runtimes each scheduling (and spinning) for every core of the machine. The verdict takes the worst of the other handoff rows.")
	t.Notes = append(t.Notes, "Server CPU per request is the utime+stime of all the set-up's processes (direct server; or handoff's primary and workers) over all rounds, divided by the requests they answered. It depends much less than req/s on what else the machine runs, and it shows what handoff adds to the work of answering a request.")
	b.r.Tables = append(b.r.Tables, t)
	b.r.Verdicts = append(b.r.Verdicts, Verdict{
		Target:   "steady state: handoff at least 0.97 of direct req/s",
		Measured: fmt.Sprintf("worst set-up %.3f", worst),
		Met:      worst >= 0.97,
	})
}

// 2. Deploy disruption.
func (b *bencher) disruption(ctx context.Context) error {
	t := Table{
		Title: "2. Deploy disruption",
		Header: []string{"system", "load", "upgrades", "failed (raw)", "failures by kind",
			"steady p99", "window p99", "window p99.9", "p99 window/steady", "req/s window/steady", "upgrade (median)"},
		Notes: []string{
			fmt.Sprintf("%d clients, %d upgrades per run, %v of steady load before, between and after them; %d runs per row, taken in turn. Failures and upgrades are totals over the runs; latencies and ratios are medians of the runs, with the lowest and highest run in brackets. A window lasts from the upgrade signal until the old process has exited and the new one answers; a request belongs to it if any part of it fell inside. Failures are raw: every request is a POST that cannot be replayed and no client retries; a refused connection is retried at once by the next request of the same client, so a dark port piles failures up.",
				b.cfg.Clients, b.cfg.Upgrades, b.cfg.Gap, b.cfg.DisruptRuns),
			"handoff runs 2 workers with --ready notify; the naive restarter sends SIGTERM (the server drains), waits for the exit, starts the new process; the tableflip process does Upgrade on SIGHUP and http.Server.Shutdown once Exit() fires.",
		},
	}
	rows, err := b.disruptionRuns(ctx)
	if err != nil {
		return err
	}
	for _, r := range rows {
		b.disruptionRow(&t, r)
	}
	b.r.Tables = append(b.r.Tables, t)
	return nil
}

// disruptRuns are the runs of one row of benchmark 2: a system under one
// load.
type disruptRuns struct {
	sys  system
	mode string
	res  []loadgen.Result
	took []time.Duration
}

// disruptionSystems are the systems benchmark 2 compares, new ones for
// each run.
func (b *bencher) disruptionSystems() []system {
	sys := []system{&handoffSystem{bin: b.cfg.Handoff, server: b.cfg.Server, workers: 2}}
	if b.cfg.Hello != "" {
		sys = append(sys, &handoffSystem{bin: b.cfg.Hello, workers: 2, library: true})
	}
	return append(sys, &naiveSystem{server: b.cfg.Server}, &tableflipSystem{server: b.cfg.Server, dir: b.cfg.Dir})
}

// disruptionRuns runs every system under each load, cfg.DisruptRuns
// times, in turn, and returns the runs by row.
func (b *bencher) disruptionRuns(ctx context.Context) ([]*disruptRuns, error) {
	var rows []*disruptRuns
	for run := 0; run < b.cfg.DisruptRuns; run++ {
		k := 0
		for _, newConn := range []bool{false, true} {
			mode := "keep-alive"
			if newConn {
				mode = "new connection"
			}
			for _, sys := range b.disruptionSystems() {
				res, took, err := b.disrupt(ctx, sys, newConn)
				if err != nil {
					return nil, fmt.Errorf("%s, %s: %w", sys.name(), mode, err)
				}
				if run == 0 {
					rows = append(rows, &disruptRuns{sys: sys, mode: mode})
				}
				rows[k].res = append(rows[k].res, res)
				rows[k].took = append(rows[k].took, took...)
				k++
			}
		}
	}
	return rows, nil
}

// disruptionRow adds r's row to t, and for handoff its verdicts: no
// request lost, p99 in the upgrade windows within twice the steady one.
func (b *bencher) disruptionRow(t *Table, r *disruptRuns) {
	var failed, requests int64
	allKinds := map[string]int64{}
	var steady, window, window999 []time.Duration
	var p99Ratio, rpsRatio []float64
	for _, res := range r.res {
		failed += res.Failures
		requests += res.Requests
		for k, v := range res.FailuresByKind {
			allKinds[k] += v
		}
		steady, window, window999 = append(steady, res.Steady.P99), append(window, res.Windows.P99), append(window999, res.Windows.P999)
		p99Ratio = append(p99Ratio, float64(res.Windows.P99)/float64(res.Steady.P99))
		rpsRatio = append(rpsRatio, res.Windows.RPS()/res.Steady.RPS())
	}
	t.Rows = append(t.Rows, []string{r.sys.name(), r.mode, fmt.Sprint(len(r.took)),
		fmt.Sprintf("%d of %d", failed, requests), kinds(allKinds),
		spreadDur(steady), spreadDur(window), spreadDur(window999),
		spread(p99Ratio), spread(rpsRatio), fmtDur(medianDur(r.took))})
	h, ok := r.sys.(*handoffSystem)
	if !ok {
		return
	}
	label := r.mode
	if h.library {
		label += ", library mode"
	}
	ratio := median(p99Ratio)
	b.r.Verdicts = append(b.r.Verdicts,
		Verdict{Target: "deploys (" + label + "): handoff loses 0 requests", Measured: fmt.Sprintf("%d failed of %d", failed, requests), Met: failed == 0},
		Verdict{Target: "deploys (" + label + "): handoff p99 in upgrade windows within 2x steady p99",
			Measured: fmt.Sprintf("%.2fx (%s; %s vs %s)", ratio, runsOf(len(p99Ratio)), fmtDur(medianDur(window)), fmtDur(medianDur(steady))),
			Met:      math.Round(ratio*100) <= 200}) // judged as shown: latency buckets are 1/16 wide
}

func runsOf(n int) string {
	if n == 1 {
		return "1 run"
	}
	return fmt.Sprintf("median of %d runs", n)
}

// spread is the median of xs with the lowest and highest in brackets.
func spread(xs []float64) string {
	if len(xs) == 1 {
		return fmt.Sprintf("%.2f", xs[0])
	}
	return fmt.Sprintf("%.2f (%.2f–%.2f)", median(xs), quantile(xs, 0), quantile(xs, 1))
}

func spreadDur(ds []time.Duration) string {
	if len(ds) == 1 {
		return fmtDur(ds[0])
	}
	return fmt.Sprintf("%s (%s–%s)", fmtDur(medianDur(ds)), fmtDur(quantileDur(ds, 0)), fmtDur(quantileDur(ds, 1)))
}

// disrupt runs one system under load through cfg.Upgrades upgrades.
func (b *bencher) disrupt(ctx context.Context, sys system, newConn bool) (loadgen.Result, []time.Duration, error) {
	defer sys.stop()
	addr, err := sys.start(ctx)
	if err != nil {
		return loadgen.Result{}, nil, err
	}
	b.load(ctx, addr, newConn, b.cfg.Warmup).Wait()
	run := b.load(ctx, addr, newConn, time.Hour)
	defer run.Stop()
	var took []time.Duration
	for i := 0; i < b.cfg.Upgrades; i++ {
		if err := sleep(ctx, b.cfg.Gap); err != nil {
			return loadgen.Result{}, nil, err
		}
		run.BeginWindow()
		start := time.Now()
		err := sys.upgrade(ctx)
		run.EndWindow()
		if err != nil {
			return loadgen.Result{}, nil, fmt.Errorf("upgrade %d: %w", i+1, err)
		}
		took = append(took, time.Since(start))
	}
	if err := sleep(ctx, b.cfg.Gap); err != nil {
		return loadgen.Result{}, nil, err
	}
	res := run.Stop()
	b.progress("%-26s newconn=%-5v failed %d/%d kinds %v steady p99 %v window p99 %v p99.9 %v",
		sys.name(), newConn, res.Failures, res.Requests, res.FailuresByKind, res.Steady.P99, res.Windows.P99, res.Windows.P999)
	return res, took, nil
}

// 3. Upgrade duration against the number of workers; item 5's idle and
// per-worker figures come from the same primaries.
func (b *bencher) scaling(ctx context.Context) error {
	delays := []time.Duration{0, b.cfg.ReadyDelay}
	med := make([][]time.Duration, len(delays))
	for di, delay := range delays {
		for _, n := range b.cfg.Workers {
			took, err := b.upgradeTimes(ctx, n, delay)
			if err != nil {
				return err
			}
			med[di] = append(med[di], medianDur(took))
			b.progress("%2d workers, ready after %-6v: upgrade %v (median of %d)", n, delay, medianDur(took), len(took))
		}
	}
	t := Table{
		Title:  "3. Upgrade duration against the number of workers",
		Header: []string{"workers", "ready at once", fmt.Sprintf("ready after %v", b.cfg.ReadyDelay), fmt.Sprintf("N × %v", b.cfg.ReadyDelay)},
		Notes:  []string{fmt.Sprintf("Time from SIGHUP to the primary's \"upgrade finished\" (every slot has a new ready worker; the old ones drain after), no load, median of %d deploys. Workers are replaced one at a time, so the time grows with N.", b.cfg.Deploys)},
	}
	for i, n := range b.cfg.Workers {
		t.Rows = append(t.Rows, []string{fmt.Sprint(n), fmtDur(med[0][i]), fmtDur(med[1][i]), fmtDur(time.Duration(n) * b.cfg.ReadyDelay)})
	}
	for di, delay := range delays {
		b.scalingFit(&t, delay, med[di])
	}
	b.r.Tables = append(b.r.Tables, t)
	return nil
}

// upgradeTimes starts a primary of n workers ready after delay, and
// returns how long each of cfg.Deploys deploys took. With no delay it
// also records the primary's idle cost and its CPU per deploy.
func (b *bencher) upgradeTimes(ctx context.Context, n int, delay time.Duration) ([]time.Duration, error) {
	p, _, err := startPrimary(ctx, b.cfg.Handoff, b.cfg.Server, n, "--ready-delay", delay.String())
	if err != nil {
		return nil, err
	}
	if delay == 0 {
		if err := b.idleCost(ctx, p, n); err != nil {
			p.stop()
			return nil, err
		}
	}
	cpu0, _ := procCPU(p.pid())
	took, err := p.deploys(ctx, b.cfg.Deploys)
	if err != nil {
		p.stop()
		return nil, fmt.Errorf("%d workers, ready after %v: %w", n, delay, err)
	}
	cpu1, _ := procCPU(p.pid())
	if delay == 0 {
		b.deployMs = append(b.deployMs, float64((cpu1-cpu0).Milliseconds())/float64(b.cfg.Deploys))
	}
	p.stop()
	return took, nil
}

// scalingFit notes on t the least-squares fit of the upgrade times med
// (one per cfg.Workers) with workers ready after delay, and judges it when
// delay is not zero.
func (b *bencher) scalingFit(t *Table, delay time.Duration, med []time.Duration) {
	ns := make([]float64, len(b.cfg.Workers))
	for i, n := range b.cfg.Workers {
		ns[i] = float64(n)
	}
	ys := make([]float64, len(med))
	for i, d := range med {
		ys[i] = d.Seconds()
	}
	slope, icept, r2 := linearFit(ns, ys)
	what := "ready at once"
	if delay > 0 {
		what = fmt.Sprintf("ready after %v", delay)
	}
	sign := "+"
	if icept < 0 {
		sign, icept = "−", -icept
	}
	t.Notes = append(t.Notes, fmt.Sprintf("%s: least-squares fit %s per worker %s %s (R² %.3f).", what,
		fmtDur(time.Duration(slope*float64(time.Second))), sign, fmtDur(time.Duration(icept*float64(time.Second))), r2))
	if delay > 0 {
		perWorker := time.Duration(slope * float64(time.Second))
		b.r.Verdicts = append(b.r.Verdicts, Verdict{
			Target:   fmt.Sprintf("upgrade time linear in N, near N × time-to-ready (%v)", delay),
			Measured: fmt.Sprintf("%s per worker, R² %.3f", fmtDur(perWorker), r2),
			Met:      r2 >= 0.98 && perWorker >= delay && perWorker <= delay*3/2,
		})
	}
}

// idleCost records the primary's RSS and its CPU over cfg.Gap of idling.
func (b *bencher) idleCost(ctx context.Context, p *primary, n int) error {
	// Let start-up settle before measuring.
	if err := sleep(ctx, b.cfg.Gap/3); err != nil {
		return err
	}
	cpu0, _ := procCPU(p.pid())
	start := time.Now()
	if err := sleep(ctx, b.cfg.Gap); err != nil {
		return err
	}
	cpu1, _ := procCPU(p.pid())
	rss, err := procRSS(p.pid())
	if err != nil {
		return err
	}
	b.idle = append(b.idle, idleSample{workers: n, rss: rss, cpu: (cpu1 - cpu0).Seconds() / time.Since(start).Seconds()})
	return nil
}

// 5. The primary's own cost, from what the other benchmarks gathered.
func (b *bencher) primaryTable() {
	if len(b.idle) == 0 && len(b.loadCPU) == 0 {
		return
	}
	t := Table{
		Title:  "5. The primary's own cost",
		Header: []string{"workers", "RSS idle", "CPU idle", "CPU per deploy"},
		Notes:  []string{fmt.Sprintf("RSS is VmRSS of /proc/PID/status; CPU is utime+stime of /proc/PID/stat (10 ms ticks) over the interval: idle is a share of one core over %v, a deploy's is the CPU time it took (all workers replaced, no load). The workers' own cost is not included: a worker is the user's process, exec'd with nothing of handoff left in it.", b.cfg.Gap)},
	}
	var ns, rss []float64
	for i, s := range b.idle {
		row := []string{fmt.Sprint(s.workers), fmtBytes(s.rss), fmt.Sprintf("%.1f%%", 100*s.cpu), "—"}
		if i < len(b.deployMs) {
			row[3] = fmt.Sprintf("%.1f ms", b.deployMs[i])
		}
		t.Rows = append(t.Rows, row)
		ns, rss = append(ns, float64(s.workers)), append(rss, float64(s.rss))
	}
	if len(ns) >= 2 {
		slope, icept, _ := linearFit(ns, rss)
		t.Notes = append(t.Notes, fmt.Sprintf("Per-worker overhead (fit of idle RSS against workers): %s per worker over a base of %s.",
			fmtBytes(int64(slope)), fmtBytes(int64(icept))))
	}
	if len(b.loadCPU) > 0 {
		var maxRSS int64
		for _, r := range b.loadRSS {
			maxRSS = max(maxRSS, r)
		}
		t.Notes = append(t.Notes, fmt.Sprintf("Under the keep-alive load of benchmark 1 (the CLI with 1 and 2 workers): CPU median %.2f%% of a core (max %.2f%%), RSS at most %s. The primary never touches a request: the workers accept on their sockets themselves, and the steering program runs in the kernel.",
			100*median(b.loadCPU), 100*maxF(b.loadCPU), fmtBytes(maxRSS)))
	}
	b.r.Tables = append(b.r.Tables, t)
}

// 6. Balance across workers with the default --balance.
func (b *bencher) balance(ctx context.Context) error {
	t := Table{
		Title:  "6. Balance across workers (default --balance)",
		Header: []string{"workers", "load", "fair share", "busiest worker", "idlest worker", "failed"},
		Notes: []string{fmt.Sprintf("Share of the requests each worker answered (the pid in every answer), %d clients for %v, with handoff's default --balance (auto: round-robin where eBPF may be loaded, random elsewhere). With keep-alive a connection stays with the worker that accepted it, so the split is made once per connection; with a new connection per request it is made per request.",
			b.cfg.Clients, b.cfg.Steady)},
	}
	for _, n := range b.cfg.Balance {
		p, addr, err := startPrimary(ctx, b.cfg.Handoff, b.cfg.Server, n)
		if err != nil {
			return err
		}
		var pids []string
		for _, pid := range p.workerPIDs() {
			pids = append(pids, fmt.Sprint(pid))
		}
		for _, newConn := range []bool{false, true} {
			res := b.measure(ctx, addr, newConn)
			var counts []int64
			var total int64
			for _, pid := range pids {
				counts = append(counts, res.PIDs[pid])
				total += res.PIDs[pid]
			}
			sort.Slice(counts, func(i, j int) bool { return counts[i] < counts[j] })
			mode := "keep-alive"
			if newConn {
				mode = "new connection"
			}
			share := func(c int64) string {
				if total == 0 {
					return "—"
				}
				return fmt.Sprintf("%.1f%%", 100*float64(c)/float64(total))
			}
			t.Rows = append(t.Rows, []string{fmt.Sprint(n), mode, fmt.Sprintf("%.1f%%", 100/float64(n)),
				share(counts[len(counts)-1]), share(counts[0]), fmt.Sprint(res.Failures)})
			b.progress("%d workers %-14s per worker %v", n, mode, counts)
		}
		p.stop()
	}
	b.r.Tables = append(b.r.Tables, t)
	return nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
