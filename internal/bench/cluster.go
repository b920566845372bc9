package bench

import (
	"bufio"
	"cmp"
	"context"
	_ "embed"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/handoff-dev/handoff/internal/loadgen"
)

// nodeWorker is the CPU-bound Node.js server of benchmark 9.
//
//go:embed nodeworker.js
var nodeWorker []byte

// Benchmark 9's shape: four single-threaded workers, each spending
// clusterWorkMs of blocking work per request, under keep-alive clients
// that open their connections at once (a proxy's pool).
const (
	clusterWorkers = 4
	clusterWorkMs  = 2
)

var clusterConns = []int{4, 8}

// clusterSystem is one set-up of benchmark 9: Node's cluster, or handoff
// with a --balance mode ("" leaves the flag out: this handoff has none).
type clusterSystem struct {
	name    string
	balance string
	actual  string // the mode handoff said it balances with ("balancing")
	addr    string
	pids    func() []int // the workers
	stop    func()
}

// 9. Balance with CPU-bound workers: Node's cluster against handoff's
// balance modes.
func (b *bencher) cluster(ctx context.Context) error {
	t := Table{
		Title:  "9. Balance with CPU-bound workers: handoff against Node's cluster",
		Header: []string{"set-up", "connections", "req/s", "vs Node cluster", "share of requests per worker", "failed"},
		Notes: []string{fmt.Sprintf("%d single-threaded Node.js workers (internal/bench/nodeworker.js), each spending %d ms of blocking work (a busy loop) on every request; %s keep-alive clients whose connections open at once, as a proxy's pool does, for %v after %v of warm-up (whose connections are closed again); median of %d rounds, the set-ups side by side, the load moving from one to the next. A keep-alive connection stays with the worker it reached, so how the connections were spread decides the throughput. \"vs Node cluster\" is the median of the per-round ratios; the shares are each worker's part of the requests, busiest first, averaged over the rounds.",
			clusterWorkers, clusterWorkMs, joinInts(clusterConns, " and "), b.cfg.Steady, b.cfg.Warmup, b.cfg.ClusterRounds),
			"Node's cluster: its primary accepts every connection and hands it to the workers in turn (SCHED_RR, its default on Linux). handoff runs the same script with --ipc --ready notify; each worker takes its socket from fd 3.",
			fmt.Sprintf("With all workers busy the machine's cores bound the throughput: at most about cores × 1000 / %d req/s (%d cores here, the load generator on them too).", clusterWorkMs, b.r.Machine.CPUs)},
	}
	verdict := Verdict{Target: "balance: handoff --balance round-robin at least 0.95 of Node cluster's req/s (4 and 8 keep-alive connections)"}
	node, err := exec.LookPath(cmp.Or(b.cfg.Node, "node"))
	if err != nil {
		t.Notes = append(t.Notes, fmt.Sprintf("Skipped: no Node.js (%v).", err))
		verdict.Measured, verdict.Skipped = "needs node", true
		b.r.Tables = append(b.r.Tables, t)
		b.r.Verdicts = append(b.r.Verdicts, verdict)
		b.progress("node balance skipped: %v", err)
		return nil
	}
	script := filepath.Join(b.cfg.Dir, "nodeworker.js")
	if err := os.WriteFile(script, nodeWorker, 0o644); err != nil {
		return err
	}

	systems := b.clusterSystems(ctx, &t, &verdict)
	up, err := b.startClusterSystems(ctx, node, script, systems, &t)
	defer stopClusterSystems(up)
	if err != nil {
		return err
	}

	rrRatio := map[int]float64{}
	for _, conns := range clusterConns {
		results := b.clusterRounds(ctx, up, conns)
		b.clusterRows(&t, up, conns, results, rrRatio)
	}
	if !verdict.Skipped {
		judgeCluster(&verdict, rrRatio)
	}
	b.r.Tables = append(b.r.Tables, t)
	b.r.Verdicts = append(b.r.Verdicts, verdict)
	return nil
}

// clusterSystems are the set-ups of benchmark 9: Node's cluster first,
// then handoff with each --balance mode, or with none if this handoff has
// no --balance (noted on t, and the verdict skipped).
func (b *bencher) clusterSystems(ctx context.Context, t *Table, verdict *Verdict) []*clusterSystem {
	systems := []*clusterSystem{{name: "Node cluster"}}
	help, _ := exec.CommandContext(ctx, b.cfg.Handoff, "run", "--help").CombinedOutput()
	if strings.Contains(string(help), "--balance") {
		for _, mode := range []string{"round-robin", "random", "shared"} {
			systems = append(systems, &clusterSystem{name: "handoff --balance " + mode, balance: mode})
		}
	} else {
		systems = append(systems, &clusterSystem{name: "handoff, one shared socket (no --balance)"})
		t.Notes = append(t.Notes, "This handoff has no --balance: its workers share one socket, the only row of it here.")
		verdict.Measured, verdict.Skipped = "needs handoff run --balance", true
	}
	return systems
}

// startClusterSystems starts systems, running script with node, and
// returns those that started, also on error. A --balance mode that does
// not start is noted on t and left out; any other set-up that does not
// start is an error.
func (b *bencher) startClusterSystems(ctx context.Context, node, script string, systems []*clusterSystem, t *Table) ([]*clusterSystem, error) {
	var up []*clusterSystem
	for _, s := range systems {
		var err error
		if s.name == "Node cluster" {
			err = b.startNodeCluster(ctx, node, script, s)
		} else {
			err = b.startNodeHandoff(ctx, node, script, s)
		}
		if err != nil {
			if s.balance == "" || s.name == "Node cluster" {
				return up, fmt.Errorf("%s: %w", s.name, err)
			}
			// A mode this machine cannot give is a row of its own.
			t.Notes = append(t.Notes, fmt.Sprintf("%s did not start: %v.", s.name, err))
			b.progress("%s did not start: %v", s.name, err)
			continue
		}
		up = append(up, s)
	}
	return up, nil
}

// stopClusterSystems stops up, the last started first.
func stopClusterSystems(up []*clusterSystem) {
	for i := len(up) - 1; i >= 0; i-- {
		up[i].stop()
	}
}

// clusterResult is one set-up's figures over the rounds of benchmark 9,
// with one number of connections.
type clusterResult struct {
	rps    []float64
	ratio  []float64
	shares []float64 // summed over rounds, busiest first
	failed int64
}

// clusterRounds loads each of up with conns connections, in turn, for
// cfg.ClusterRounds rounds, and returns the results by set-up.
func (b *bencher) clusterRounds(ctx context.Context, up []*clusterSystem, conns int) []clusterResult {
	results := make([]clusterResult, len(up))
	for round := range b.cfg.ClusterRounds {
		rps := make([]float64, len(up))
		for k := range up {
			i := (k + round) % len(up)
			s := up[i]
			b.clusterLoad(ctx, s.addr, conns, b.cfg.Warmup).Wait()
			res := b.clusterLoad(ctx, s.addr, conns, b.cfg.Steady).Wait()
			rps[i] = float64(res.Requests-res.Failures) / res.Elapsed.Seconds()
			shares := workerShares(res, s.pids())
			r := &results[i]
			r.rps = append(r.rps, rps[i])
			r.failed += res.Failures
			if r.shares == nil {
				r.shares = make([]float64, len(shares))
			}
			for j, sh := range shares {
				r.shares[j] += sh
			}
			b.progress("round %d %-42s %d conns %6.0f req/s shares %v failed %d", round+1, s.name, conns, rps[i], fmtShares(shares), res.Failures)
		}
		for i := range up {
			results[i].ratio = append(results[i].ratio, rps[i]/rps[0])
		}
	}
	return results
}

// clusterRows adds to t the rows of up with conns connections, and notes
// in rrRatio round-robin's ratio to Node's cluster, if handoff balanced
// with it.
func (b *bencher) clusterRows(t *Table, up []*clusterSystem, conns int, results []clusterResult, rrRatio map[int]float64) {
	for i, s := range up {
		r := results[i]
		for j := range r.shares {
			r.shares[j] /= float64(b.cfg.ClusterRounds)
		}
		vs := "1"
		if i > 0 {
			vs = fmt.Sprintf("%.3f", median(r.ratio))
		}
		if s.balance == "round-robin" && (s.actual == "" || s.actual == s.balance) {
			rrRatio[conns] = median(r.ratio)
		}
		t.Rows = append(t.Rows, []string{s.name, fmt.Sprint(conns), fmt.Sprintf("%.0f", median(r.rps)), vs, fmtShares(r.shares), fmt.Sprint(r.failed)})
	}
}

// judgeCluster judges round-robin's ratios to Node's cluster's req/s
// (rrRatio, by connections): at least 0.95 with each number of
// connections.
func judgeCluster(verdict *Verdict, rrRatio map[int]float64) {
	if len(rrRatio) < len(clusterConns) {
		verdict.Measured, verdict.Skipped = "round-robin did not start here", true
		return
	}
	var parts []string
	worst := math.Inf(1)
	for _, c := range clusterConns {
		parts = append(parts, fmt.Sprintf("%.3f with %d", rrRatio[c], c))
		worst = math.Min(worst, rrRatio[c])
	}
	verdict.Measured, verdict.Met = strings.Join(parts, ", "), worst >= 0.95
}

// clusterLoad is conns keep-alive clients against addr for d.
func (b *bencher) clusterLoad(ctx context.Context, addr string, conns int, d time.Duration) *loadgen.Run {
	return loadgen.Start(ctx, loadgen.Config{URL: "http://" + addr + "/", KeepAlive: conns, Duration: d, MaxRequests: math.MaxInt64})
}

// workerShares is each worker's part of the requests res answered,
// busiest first: one entry per worker in pids, and one per other pid that
// answered (which should not happen).
func workerShares(res loadgen.Result, pids []int) []float64 {
	counts := map[string]int64{}
	for _, pid := range pids {
		counts[fmt.Sprint(pid)] = 0
	}
	var total int64
	for pid, n := range res.PIDs {
		counts[pid] += n
		total += n
	}
	var shares []float64
	for _, n := range counts {
		share := 0.0
		if total > 0 {
			share = float64(n) / float64(total)
		}
		shares = append(shares, share)
	}
	slices.SortFunc(shares, func(a, b float64) int { return cmp.Compare(b, a) })
	return shares
}

// fmtShares is "40 / 30 / 20 / 10 %".
func fmtShares(shares []float64) string {
	var parts []string
	for _, s := range shares {
		parts = append(parts, fmt.Sprintf("%.0f", 100*s))
	}
	return strings.Join(parts, " / ") + " %"
}

func joinInts(xs []int, sep string) string {
	var parts []string
	for _, x := range xs {
		parts = append(parts, fmt.Sprint(x))
	}
	return strings.Join(parts, sep)
}

// startNodeCluster runs the script as Node's cluster primary with
// clusterWorkers workers on a free port, until it says they all listen
// (and which they are).
func (b *bencher) startNodeCluster(ctx context.Context, node, script string, s *clusterSystem) error {
	addr, err := freeAddr()
	if err != nil {
		return err
	}
	_, port, _ := strings.Cut(addr, ":")
	cmd := exec.Command(node, script)
	cmd.Env = append(os.Environ(), fmt.Sprintf("CLUSTER=%d", clusterWorkers), "PORT="+port, fmt.Sprintf("WORK_MS=%d", clusterWorkMs))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	tb := &tailBuffer{}
	cmd.Stderr = tb
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	listening := make(chan []int, 1)
	go func() {
		readListening(out, listening)
		cmd.Wait()
		close(exited)
	}()
	s.stop = func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
		// Its workers are in its process group, which it leads.
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	var pids []int
	select {
	case pids = <-listening:
	case <-exited:
		return fmt.Errorf("node cluster exited: %s", tb)
	case <-time.After(time.Minute):
		s.stop()
		return fmt.Errorf("node cluster not listening within a minute: %s", tb)
	case <-ctx.Done():
		s.stop()
		return ctx.Err()
	}
	s.addr = addr
	s.pids = func() []int { return pids }
	return nil
}

// readListening reads the cluster primary's stdout, out, to its end, and
// sends the worker pids of its "listening" line, the first, to listening.
func readListening(out io.Reader, listening chan<- []int) {
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "listening "); ok {
			var pids []int
			for _, f := range strings.Fields(rest) {
				if pid, err := strconv.Atoi(f); err == nil {
					pids = append(pids, pid)
				}
			}
			listening <- pids
			break
		}
	}
	io.Copy(io.Discard, out)
}

// startNodeHandoff runs the script as clusterWorkers workers of handoff,
// with --balance s.balance if set.
func (b *bencher) startNodeHandoff(ctx context.Context, node, script string, s *clusterSystem) error {
	flags := []string{"--ipc"}
	if s.balance != "" {
		flags = append(flags, "--balance", s.balance)
	}
	cmd := handoffCmd(b.cfg.Handoff, flags, node, clusterWorkers, script)
	cmd.Env = append(os.Environ(), fmt.Sprintf("WORK_MS=%d", clusterWorkMs))
	p, addr, err := startPrimaryCmd(ctx, cmd)
	if err != nil {
		return err
	}
	if s.balance != "" {
		p.mu.Lock()
		for _, e := range p.events {
			if e.msg == "balancing" {
				s.actual = e.str("mode")
				if s.actual != s.balance {
					s.name = fmt.Sprintf("%s (balancing %s: %s)", s.name, s.actual, e.str("reason"))
				}
			}
		}
		p.mu.Unlock()
	}
	s.addr, s.pids, s.stop = addr, p.workerPIDs, p.stop
	return nil
}
