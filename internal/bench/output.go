package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"
)

// outputWorkers write the lines of the worker-output benchmark.
const outputWorkers = 2

// outputLineSize is the size of each line, newline included.
const outputLineSize = 100

// 7. Worker output: how many lines a second the primary forwards from its
// workers' stdout, and what that costs it, in each --worker-output mode.
func (b *bencher) output(ctx context.Context) error {
	t := Table{
		Title:  "7. Worker output: lines forwarded from the workers' stdout",
		Header: []string{"--worker-output", "lines", "lines/s", "MB/s in", "primary CPU (of one core)", "primary CPU per million lines", "primary RSS (max)"},
		Notes: []string{fmt.Sprintf("%d workers (the bench server) each write %d lines of %d bytes to stdout as fast as they can, at once; the bench reads handoff's stdout through a pipe and counts lines. The time runs from the signal that starts the writing to the last line read; CPU is the primary's utime+stime over that time, RSS its VmRSS sampled every 20 ms. In raw mode the workers write into that pipe themselves and the primary does nothing; in prefix and json mode each worker's stdout is a pipe of its own that the primary reads, labels and writes out, whole lines under a lock. The machine's cores are shared by the workers, the primary and the reader.",
			outputWorkers, b.cfg.OutputLines, outputLineSize)},
	}
	for _, mode := range []string{"raw", "prefix", "json"} {
		r, err := b.outputRun(ctx, mode)
		if err != nil {
			return fmt.Errorf("--worker-output %s: %w", mode, err)
		}
		rate := float64(r.lines) / r.took.Seconds()
		perM := "—"
		if r.lines > 0 {
			perM = fmtDur(time.Duration(float64(r.cpu) * 1e6 / float64(r.lines)))
		}
		t.Rows = append(t.Rows, []string{mode, fmt.Sprint(r.lines), fmt.Sprintf("%.0f", rate),
			fmt.Sprintf("%.1f", rate*outputLineSize/1e6), fmt.Sprintf("%.0f%%", 100*r.cpu.Seconds()/r.took.Seconds()), perM, fmtBytes(r.rss)})
		b.progress("worker output %-6s: %d lines in %v, %.0f lines/s, primary CPU %v, RSS %s", mode, r.lines, r.took, rate, r.cpu, fmtBytes(r.rss))
	}
	b.r.Tables = append(b.r.Tables, t)
	return nil
}

type outputResult struct {
	lines int64
	took  time.Duration
	cpu   time.Duration // the primary's
	rss   int64         // the primary's, at most
}

// outputRun runs one mode: starts handoff, has every worker write its
// lines, and waits until all have come out on handoff's stdout.
func (b *bencher) outputRun(ctx context.Context, mode string) (outputResult, error) {
	cmd := handoffCmd(b.cfg.Handoff, []string{"--worker-output", mode}, b.cfg.Server, outputWorkers,
		"--spew", strconv.Itoa(b.cfg.OutputLines), "--spew-size", strconv.Itoa(outputLineSize))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return outputResult{}, err
	}
	p, _, err := startPrimaryCmd(ctx, cmd)
	if err != nil {
		return outputResult{}, err
	}
	defer p.stop()
	c := &lineCounter{want: int64(outputWorkers * b.cfg.OutputLines), done: make(chan struct{})}
	go c.count(stdout)
	res := outputResult{}
	cpu0, _ := procCPU(p.pid())
	start := time.Now()
	for _, pid := range p.workerPIDs() {
		if err := syscall.Kill(pid, syscall.SIGUSR1); err != nil {
			return res, err
		}
	}
	if err := c.wait(ctx, p, &res); err != nil {
		return res, err
	}
	res.took = time.Since(start)
	cpu1, _ := procCPU(p.pid())
	res.cpu = cpu1 - cpu0
	if rss, err := procRSS(p.pid()); err == nil {
		res.rss = max(res.rss, rss)
	}
	if res.lines = c.lines.Load(); res.lines < c.want {
		return res, fmt.Errorf("%d of %d lines came out", res.lines, c.want)
	}
	return res, nil
}

// lineCounter counts the lines of handoff's stdout until want have come.
type lineCounter struct {
	want  int64
	lines atomic.Int64
	// done is closed once want lines have come, or the output ended
	// early with an error.
	done chan struct{}
}

// count reads r until it ends, counting its lines.
func (c *lineCounter) count(r io.Reader) {
	buf := make([]byte, 256<<10)
	closed := false
	for {
		n, err := r.Read(buf)
		if c.lines.Add(int64(bytes.Count(buf[:n], []byte("\n")))) >= c.want && !closed {
			closed = true
			close(c.done)
		}
		if err != nil {
			if err != io.EOF && !closed {
				close(c.done)
			}
			return
		}
	}
}

// wait waits for done, for 5 minutes at most, sampling the primary's RSS
// into res every 20 ms meanwhile.
func (c *lineCounter) wait(ctx context.Context, p *primary, res *outputResult) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	timeout := time.After(5 * time.Minute)
	for {
		select {
		case <-c.done:
			return nil
		case <-tick.C:
			if rss, err := procRSS(p.pid()); err == nil {
				res.rss = max(res.rss, rss)
			}
		case <-timeout:
			return fmt.Errorf("%d of %d lines after 5 minutes", c.lines.Load(), c.want)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
