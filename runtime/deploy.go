//go:build linux

package runtime

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"

	"github.com/handoff-dev/handoff/internal/pin"
	"github.com/handoff-dev/handoff/workerpool"
	"go.uber.org/zap"
)

// deploy rolls the workers onto the command now on disk, pinned, first
// upgrading the primary itself when its executable has changed.
func (p *primary) deploy(ctx context.Context) error {
	p.gen++
	gen := p.gen
	if p.selfChanged() {
		return p.deploySelf(ctx, gen)
	}
	d := p.beginDeploy(gen, kindWorkers)
	path, err := resolveCommand(p.cfg.Command[0])
	var pf *pin.File
	if err == nil {
		pf, err = p.pinCommand(path)
	}
	if err != nil {
		p.log.Error("upgrade aborted", zap.Int("generation", gen), zap.String("reason", err.Error()))
		p.endDeploy(ctx, d, outcomeAborted, err)
		return err
	}
	spec := p.spec(path, gen)
	spec.Pin = pf
	return p.rollGeneration(ctx, d, &generation{gen: gen, spec: spec}, true)
}

// deploySelf is a deploy that upgrades the primary itself: the new
// primary rolls the workers and reports the outcome once it has taken
// over.
func (p *primary) deploySelf(ctx context.Context, gen int) error {
	d := p.beginDeploy(gen, kindPrimary, zap.Duration("timeout", p.upgradeBound()))
	err := p.upgradeSelf(ctx, gen)
	// A binary written a moment ago may still be open for writing
	// somewhere (golang/go#22315); tableflip reports it as text.
	for end := time.Now().Add(time.Second); err != nil && ctx.Err() == nil && time.Now().Before(end) &&
		strings.Contains(err.Error(), syscall.ETXTBSY.Error()); {
		time.Sleep(20 * time.Millisecond)
		err = p.upgradeSelf(ctx, gen)
	}
	if err == nil {
		p.book.setServing(gen)
		p.endDeploy(ctx, d, "", errHandedOver)
		return errHandedOver
	}
	// The new primary failed; if it had taken slots over, they were
	// rolled back to this primary's workers (upgradeSelf).
	var rb *workerpool.RolledBackError
	if errors.As(err, &rb) && ctx.Err() == nil {
		err = &rolledBack{gen: gen, serving: p.book.servingGen(), err: rb}
		p.logRolledBack(gen, time.Since(d.start), rb)
		p.endDeploy(ctx, d, outcomeRolledBack, err)
		return err
	}
	p.log.Error("upgrade aborted", zap.Int("generation", gen), zap.String("reason", "new primary: "+err.Error()))
	p.endDeploy(ctx, d, outcomeAborted, err)
	return err
}

// rollGeneration rolls the workers onto next, with probation
// (--min-uptime) and, if it fails, a roll-back of every slot to the
// current generation; it ends the deploy d with its outcome. fromDisk is
// a deploy of what is on disk: if that is the current generation's file
// again (a restart of the workers, to reload a configuration), the
// previous generation stays what a rollback deploys.
func (p *primary) rollGeneration(ctx context.Context, d *deployRun, next *generation, fromDisk bool) error {
	var to *workerpool.Spec
	if p.cur != nil {
		to = p.cur.spec
	}
	newer := newerDeploy(ctx)
	var tookOver time.Duration
	err := p.pool.RollWith(ctx, next.spec, workerpool.RollOptions{
		Surge:        p.cfg.Surge,
		Progress:     p.progress(next.gen),
		MinUptime:    p.cfg.MinUptime,
		EndProbation: newer,
		RollBackTo:   to,
		// With --standby and a socket per worker, the last slot's old
		// worker stands by through the probation at weight 0: steered
		// away, it keeps its open connections and gets no new ones, and
		// is steered back at once if the deploy fails. Otherwise it
		// retires like the others, so that once the roll is done only the
		// new version answers, on open keep-alive connections too; and on
		// one shared socket none could be kept from new connections.
		Standby: p.cfg.Standby && p.sockets != nil,
		Rolled: func() {
			tookOver = time.Since(d.start)
			p.logTookOver(next.gen, tookOver)
		},
		OnRollBack: func(cause error) {
			p.log.Warn("upgrade rolling back", zap.Int("generation", next.gen), zap.String("reason", failureLine(cause)))
			p.book.updateDeploy(func(u *UpgradeStatus) { u.RollingBack = true })
		},
	})
	var rb *workerpool.RolledBackError
	switch {
	case err == nil:
		if !fromDisk || !sameBuild(next, p.cur) {
			p.prev = p.cur
		}
		p.cur = next
		p.book.setServing(next.gen)
		fields := []zap.Field{zap.Int("generation", next.gen), zap.Duration("duration", time.Since(d.start)),
			zap.Duration("took_over", tookOver)}
		if p.cfg.MinUptime > 0 && closed(newer) {
			fields = append(fields, zap.String("probation", "ended by a newer deploy"))
		}
		p.log.Info("upgrade finished", fields...)
		p.endDeploy(ctx, d, outcomeDone, nil)
	case errors.As(err, &rb) && ctx.Err() == nil:
		err = &rolledBack{gen: next.gen, serving: p.book.servingGen(), err: rb}
		p.logRolledBack(next.gen, time.Since(d.start), rb)
		p.endDeploy(ctx, d, outcomeRolledBack, err)
	default:
		p.logAbort(next.gen, err)
		p.endDeploy(ctx, d, outcomeAborted, err)
	}
	p.keepGenerations()
	return err
}

// closed reports whether ch is closed (a nil channel never is).
func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// deployRun is one deploy (or rollback) as systemd, status, the log and
// the metrics see it.
type deployRun struct {
	gen   int
	kind  string
	start time.Time
}

// beginDeploy announces the deploy of generation gen.
func (p *primary) beginDeploy(gen int, kind string, fields ...zap.Field) *deployRun {
	d := &deployRun{gen: gen, kind: kind, start: time.Now()}
	notifySystemd(fmt.Sprintf("RELOADING=1\nMONOTONIC_USEC=%d\nSTATUS=deploying generation %d", monotonicUsec(), gen))
	p.book.setDeploying(&UpgradeStatus{Generation: gen, Kind: kind, Started: d.start})
	p.log.Info("upgrade started", append([]zap.Field{zap.Int("generation", gen), zap.String("kind", kind)}, fields...)...)
	return d
}

// endDeploy ends d with outcome: status no longer shows it; systemd learns
// the generation serving (and why not the new one); metrics count it.
// After a hand-over, the new primary, now the main process, does both; a
// deploy cancelled by a shutdown tells systemd nothing (it is stopping).
func (p *primary) endDeploy(ctx context.Context, d *deployRun, outcome string, err error) {
	p.book.setDeploying(nil)
	if errors.Is(err, errHandedOver) {
		return
	}
	if ctx.Err() == nil {
		notifySystemd(deployedState(p.book.servingGen(), d.gen, err))
	}
	p.metrics.Deployed(d.kind, outcome, time.Since(d.start), p.book.servingGen())
}

// logTookOver logs that every slot runs generation gen, took after the
// deploy began: from now on only gen answers, and its probation begins.
func (p *primary) logTookOver(gen int, took time.Duration) {
	fields := []zap.Field{zap.Int("generation", gen), zap.Duration("duration", took)}
	if p.cfg.MinUptime > 0 {
		fields = append(fields, zap.Duration("probation", p.cfg.MinUptime))
	}
	p.log.Info("upgrade took over", fields...)
}

func (p *primary) progress(gen int) func(step, steps int) {
	return func(step, steps int) {
		p.book.deployStep(step, steps)
		p.log.Info("upgrade step", zap.Int("generation", gen), zap.Int("step", step), zap.Int("steps", steps))
	}
}

// workerFields are the log fields of a worker's failure in err (none if
// it is not one).
func workerFields(err error) []zap.Field {
	var se *workerpool.StartError
	var pe *workerpool.ProbationError
	switch {
	case errors.As(err, &pe):
		return []zap.Field{zap.Int("slot", pe.Slot), zap.Int("pid", pe.Pid), zap.String("status", pe.Exit.Status),
			zap.String("stderr", pe.Exit.StderrTail), zap.Duration("ready_for", pe.ReadyFor)}
	case errors.As(err, &se):
		return []zap.Field{zap.Int("slot", se.Slot), zap.Int("pid", se.Pid), zap.String("status", se.Exit.Status),
			zap.String("stderr", se.Exit.StderrTail)}
	}
	return nil
}

func (p *primary) logAbort(gen int, err error) {
	fields := []zap.Field{zap.Int("generation", gen), zap.String("reason", err.Error())}
	p.log.Error("upgrade aborted", append(fields, workerFields(err)...)...)
}

// logRolledBack logs the end of a deploy that was rolled back.
func (p *primary) logRolledBack(gen int, took time.Duration, rb *workerpool.RolledBackError) {
	fields := []zap.Field{zap.Int("generation", gen), zap.String("reason", failureLine(rb.Cause)),
		zap.Int("to", p.book.servingGen()), zap.Int("slots", rb.Slots), zap.Duration("duration", took)}
	fields = append(fields, workerFields(rb.Cause)...)
	if rb.Err != nil {
		fields = append(fields, zap.String("error", failureLine(rb.Err)))
	}
	p.log.Error("upgrade rolled back", fields...)
}
