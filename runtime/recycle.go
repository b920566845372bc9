//go:build linux

package runtime

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"

	"github.com/handoff-dev/handoff/internal/metrics"
	"github.com/handoff-dev/handoff/workerpool"
)

// Why a worker is recycled: the reason label of
// handoff_worker_recycles_total and of "worker recycle" events.
const (
	recycleMemory   = metrics.RecycleMemory
	recycleWatchdog = metrics.RecycleWatchdog
)

// memorySamples is how many samples in a row a worker's resident set must
// be above --max-memory before it is recycled: a short spike (a large
// request, a garbage collector about to run) is not a leak.
const memorySamples = 3

// recycleBackoff bounds the pause after a replacement that failed to
// start, doubling from its minimum, so a command that no longer starts is
// not forked in a loop.
var recycleBackoff = struct{ min, max time.Duration }{time.Second, time.Minute}

// watchWorkers samples the workers every SampleInterval until ctx ends and
// has the first one found over --max-memory or hung (--watchdog) replaced
// through the primary's loop, one at a time: the job runs in turn with
// deploys, never beside one, and Pool.Replace starts the new worker before
// the old one retires, so as many workers as there are slots stay ready.
//
// Only a slot's current, ready, not draining worker is checked. The
// watchdog counts from the worker's readiness, as systemd's counts from a
// service's start: a worker that hangs before its first WATCHDOG=1 is
// caught too, and one that never sends any (a program that does not know
// the protocol) is replaced every --watchdog, which the "worker recycle"
// event says (pinged: false). WATCHDOG=trigger marks a worker hung at once.
func (p *primary) watchWorkers(ctx context.Context) {
	if p.cfg.MaxMemory <= 0 && p.cfg.Watchdog <= 0 {
		return
	}
	over := map[int]int{} // pid -> samples in a row above MaxMemory
	var rf replaceFailures
	t := time.NewTicker(p.cfg.SampleInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		w, reason, fields := p.recycleCandidate(over)
		if reason == "" {
			continue
		}
		delete(over, w.Pid)
		// A worker suspected hung drains for one watchdog period at most:
		// one that still serves loses nothing, one that is stuck is
		// killed soon.
		var drain time.Duration
		if reason == recycleWatchdog {
			drain = p.cfg.Watchdog
		}
		log := p.log.With(zap.Int("slot", w.Slot), zap.Int("pid", w.Pid), zap.Int("generation", w.Generation))
		log.Warn("worker recycle", append(fields, zap.String("reason", reason))...)
		if !p.replaceWorker(ctx, w, reason, drain, log, &rf) {
			return
		}
	}
}

// replaceFailures counts the replacements in a row that failed to start.
type replaceFailures int

// replaceWorker has w replaced through the primary's loop (Pool.Replace:
// the job runs in turn with deploys, never beside one) and waits for the
// outcome: counted in the metrics under reason, or, if the new worker did
// not start, logged and followed by a pause that grows with the failures
// in a row (rf). It returns false once ctx has ended.
func (p *primary) replaceWorker(ctx context.Context, w workerpool.WorkerInfo, reason string, drain time.Duration, log *zap.Logger, rf *replaceFailures) bool {
	done := make(chan error, 1)
	// Not p.ask: the loop waits for this goroutine once it stops
	// reading requests, so a send must end with ctx.
	select {
	case p.reqs <- request{op: "recycle", done: done, run: func(ctx context.Context) error {
		return p.pool.Replace(ctx, w.Slot, w.Pid, reason, drain)
	}}:
	case <-ctx.Done():
		return false
	}
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		return false
	}
	switch {
	case err == nil:
		*rf = 0
		p.metrics.Recycled(reason)
	case errors.Is(err, workerpool.ErrStale), errors.Is(err, ErrShuttingDown), errors.Is(err, errHandedOver),
		errors.Is(err, workerpool.ErrClosing), ctx.Err() != nil:
		// The worker went another way meanwhile.
	default:
		*rf++
		pause := workerpool.Backoff(int(*rf)+1, recycleBackoff.min, recycleBackoff.max)
		log.Error("worker recycle failed", zap.String("reason", reason), zap.Error(err), zap.Duration("backoff", pause))
		select {
		case <-ctx.Done():
			return false
		case <-time.After(pause):
		}
	}
	return true
}

// recycleCandidate returns the first worker to recycle and why ("" for
// none), updating over, the count of samples above MaxMemory by pid.
func (p *primary) recycleCandidate(over map[int]int) (workerpool.WorkerInfo, string, []zap.Field) {
	seen := map[int]bool{}
	var (
		pick   workerpool.WorkerInfo
		reason string
		fields []zap.Field
	)
	for _, w := range p.pool.Workers() {
		if !w.Current || !w.Ready || w.Draining {
			continue
		}
		seen[w.Pid] = true
		if reason != "" {
			continue
		}
		if d := p.cfg.Watchdog; d > 0 {
			if w.WatchdogTrigger {
				pick, reason, fields = w, recycleWatchdog, []zap.Field{zap.Bool("trigger", true)}
				continue
			}
			last, pinged := w.Watchdog, !w.Watchdog.IsZero()
			if !pinged {
				last = w.ReadyAt
			}
			if silent := time.Since(last); silent > d {
				pick, reason = w, recycleWatchdog
				fields = []zap.Field{zap.Duration("silent", silent), zap.Duration("watchdog", d), zap.Bool("pinged", pinged)}
				continue
			}
		}
		if p.cfg.MaxMemory > 0 {
			rss, err := workerpool.RSS(w.Pid)
			if err != nil || rss <= p.cfg.MaxMemory {
				delete(over, w.Pid)
				continue
			}
			over[w.Pid]++
			if over[w.Pid] >= memorySamples {
				pick, reason = w, recycleMemory
				fields = []zap.Field{zap.Int64("rss", rss), zap.Int64("max_memory", p.cfg.MaxMemory), zap.Int("samples", over[w.Pid])}
			}
		}
	}
	for pid := range over {
		if !seen[pid] {
			delete(over, pid)
		}
	}
	return pick, reason, fields
}
