package bench

import (
	"context"
	"fmt"
	"strconv"
	"time"
)

// surgeKs are the --surge values of benchmark 3b.
var surgeKs = []int{1, 2, 4}

// 3b. Upgrade duration with --surge K against the number of workers, for
// the slow app; and what HTTP probes cost.
func (b *bencher) surge(ctx context.Context) error {
	delay := b.cfg.ReadyDelay
	med := map[int][]time.Duration{}
	for _, k := range surgeKs {
		for _, n := range b.cfg.Workers {
			p, _, err := startPrimaryWith(ctx, b.cfg.Handoff, []string{"--surge", strconv.Itoa(k)}, b.cfg.Server, n,
				"--ready-delay", delay.String())
			if err != nil {
				return err
			}
			took, err := p.deploys(ctx, b.cfg.Deploys)
			p.stop()
			if err != nil {
				return fmt.Errorf("%d workers, --surge %d: %w", n, k, err)
			}
			med[k] = append(med[k], medianDur(took))
			b.progress("%2d workers, --surge %d: upgrade %v (median of %d)", n, k, medianDur(took), len(took))
		}
	}
	t := Table{
		Title:  "3b. Upgrade duration with --surge K",
		Header: []string{"workers", "--surge 1", "--surge 2", "--surge 4", fmt.Sprintf("⌈N/4⌉ × %v", delay)},
		Notes:  []string{fmt.Sprintf("The app of benchmark 3 that takes %v to get ready; time from SIGHUP to the primary's \"upgrade finished\", no load, median of %d deploys. Up to K new workers start at once beside the N that serve (never more than N+K live, never fewer than N ready), so a deploy takes about ⌈N/K⌉ start times.", delay, b.cfg.Deploys)},
	}
	for i, n := range b.cfg.Workers {
		row := []string{fmt.Sprint(n)}
		for _, k := range surgeKs {
			row = append(row, fmtDur(med[k][i]))
		}
		t.Rows = append(t.Rows, append(row, fmtDur(time.Duration((n+3)/4)*delay)))
	}
	last := len(b.cfg.Workers) - 1
	if n := b.cfg.Workers[last]; n >= 8 {
		ratio := med[4][last].Seconds() / med[1][last].Seconds()
		b.r.Verdicts = append(b.r.Verdicts, Verdict{
			Target:   fmt.Sprintf("%d slow workers: a deploy with --surge 4 takes at most 45%% of one with --surge 1", n),
			Measured: fmt.Sprintf("%.0f%% (%s against %s)", 100*ratio, fmtDur(med[4][last]), fmtDur(med[1][last])),
			Met:      ratio <= 0.45,
		})
	}
	probes, err := b.probeCost(ctx)
	if err != nil {
		return err
	}
	t.Notes = append(t.Notes, probes...)
	b.r.Tables = append(b.r.Tables, t)
	return nil
}

// probeCost measures what HTTP probes cost the primary: its CPU time per
// health probe, idle, and a deploy's time with --ready http:/ against
// --ready notify.
func (b *bencher) probeCost(ctx context.Context) ([]string, error) {
	const n = 4
	interval := 20 * time.Millisecond
	window := 3 * b.cfg.Gap
	cpu := func(flags []string) (time.Duration, error) {
		p, _, err := startPrimaryWith(ctx, b.cfg.Handoff, flags, b.cfg.Server, n)
		if err != nil {
			return 0, err
		}
		defer p.stop()
		if err := sleep(ctx, b.cfg.Gap/3); err != nil {
			return 0, err
		}
		c0, _ := procCPU(p.pid())
		if err := sleep(ctx, window); err != nil {
			return 0, err
		}
		c1, _ := procCPU(p.pid())
		return c1 - c0, nil
	}
	idle, err := cpu(nil)
	if err != nil {
		return nil, err
	}
	probing, err := cpu([]string{"--health", "http:/", "--health-interval", interval.String()})
	if err != nil {
		return nil, err
	}
	count := float64(n) * window.Seconds() / interval.Seconds()
	per := time.Duration(float64(probing-idle) / count)
	b.progress("health probes: %v CPU over %v (idle %v), about %.0f probes: %v each", probing, window, idle, count, per)

	deploys := map[string]time.Duration{}
	for _, ready := range []string{"notify", "http:/"} {
		p, _, err := startPrimaryWith(ctx, b.cfg.Handoff, []string{"--ready", ready}, b.cfg.Server, n)
		if err != nil {
			return nil, err
		}
		took, err := p.deploys(ctx, b.cfg.Deploys)
		p.stop()
		if err != nil {
			return nil, fmt.Errorf("--ready %s: %w", ready, err)
		}
		deploys[ready] = medianDur(took)
	}
	return []string{
		fmt.Sprintf("HTTP probes (%d workers of benchserver, idle): with --health http:/ every %v the primary used %s of CPU in %v against %s without, about %.0f probes: %s of CPU per probe (procCPU's ticks are 10 ms: a rough figure).",
			n, interval, fmtDur(probing), window, fmtDur(idle), count, fmtDur(per)),
		fmt.Sprintf("A deploy of %d workers ready at once: %s with --ready http:/ (the first probe after the start, then every --ready-interval), %s with --ready notify; median of %d.",
			n, fmtDur(deploys["http:/"]), fmtDur(deploys["notify"]), b.cfg.Deploys),
	}, nil
}
