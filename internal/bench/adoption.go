package bench

import (
	"context"
	"fmt"
	"time"
)

// 8. Bind adoption: what it adds to a worker's start.
func (b *bencher) adoption(ctx context.Context) error {
	modes := []struct {
		name        string
		flags, args []string
	}{
		{"LISTEN_FDS, --adopt-bind off (no filter)", []string{"--adopt-bind", "off"}, nil},
		{"LISTEN_FDS, --adopt-bind on (filter, nothing to adopt)", []string{"--adopt-bind", "on"}, nil},
		{"the server binds :$PORT, adopted", []string{"--adopt-bind", "on"}, []string{"--bind"}},
	}
	// One primary per mode with one worker, side by side; each round
	// deploys each once, in turn, so that the machine's drift hits all.
	prims := make([]*primary, len(modes))
	for i, m := range modes {
		p, _, err := startPrimaryWith(ctx, b.cfg.Handoff, m.flags, b.cfg.Server, 1, m.args...)
		if err != nil {
			return fmt.Errorf("%s: %w", m.name, err)
		}
		defer p.stop()
		prims[i] = p
	}
	took := make([][]time.Duration, len(modes))
	for round := 0; round < b.cfg.Starts; round++ {
		for k := range modes {
			i := (k + round) % len(modes)
			d, err := workerStart(ctx, prims[i])
			if err != nil {
				return fmt.Errorf("%s: %w", modes[i].name, err)
			}
			took[i] = append(took[i], d)
		}
	}
	t := Table{
		Title:  "8. Bind adoption: a worker's start",
		Header: []string{"worker", "spawn → READY=1 (median)", "p10 – p90", "vs no filter"},
		Notes: []string{fmt.Sprintf("One primary per row, 1 worker of the bench server each, --ready notify; %d deploys per row taken in turn, no load. The time is the primary's: from the fork of the new worker to its READY=1, which the server sends once it serves: exec step (and, with a filter, its installation and the hand-over of its notification fd), Go runtime start, the bind (with adoption, answered by the primary), the first listen. Go's net package binds port 0 twice at start to probe for IPv6: under the filter these go to the primary too, and are let run.",
			b.cfg.Starts)},
	}
	base := medianDur(took[0])
	for i, m := range modes {
		vs := "1"
		if i > 0 && base > 0 {
			vs = fmt.Sprintf("%+.2f ms", float64(medianDur(took[i])-base)/float64(time.Millisecond))
		}
		t.Rows = append(t.Rows, []string{m.name, fmtDur(medianDur(took[i])),
			fmtDur(quantileDur(took[i], 0.1)) + " – " + fmtDur(quantileDur(took[i], 0.9)), vs})
		b.progress("%-55s start %v (median of %d)", m.name, medianDur(took[i]), len(took[i]))
	}
	b.r.Tables = append(b.r.Tables, t)
	return nil
}

// workerStart deploys p's one worker anew and returns the new worker's
// start: the took of its "worker ready".
func workerStart(ctx context.Context, p *primary) (time.Duration, error) {
	from := p.next()
	if _, _, err := p.deploy(ctx); err != nil {
		return 0, err
	}
	at, err := p.wait(ctx, from, time.Minute, func(e event) bool { return e.msg == "worker ready" })
	if err != nil {
		return 0, err
	}
	p.mu.Lock()
	d, err := time.ParseDuration(p.events[at].str("took"))
	p.mu.Unlock()
	if err != nil {
		return 0, fmt.Errorf("worker ready: took: %w", err)
	}
	return d, nil
}
