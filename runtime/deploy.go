//go:build linux

package runtime

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"

	"github.com/handoff-dev/handoff/workerpool"
	"go.uber.org/zap"
)

func (p *primary) spec(path string, gen int) *workerpool.Spec {
	args := append([]string(nil), p.cfg.Command...)
	return &workerpool.Spec{Path: path, Args: args, Env: p.env, Generation: gen}
}

// deploy rolls the workers onto the command now on disk, first upgrading
// the primary itself when its executable has changed.
func (p *primary) deploy(ctx context.Context) (err error) {
	p.gen++
	gen := p.gen
	start := time.Now()
	notifySystemd(fmt.Sprintf("RELOADING=1\nMONOTONIC_USEC=%d\nSTATUS=deploying generation %d", monotonicUsec(), gen))
	kind := kindWorkers
	defer func() {
		// After a hand-over the new primary, now the main process, has
		// said READY=1 itself; after a cancelled deploy the primary is
		// stopping.
		if ctx.Err() == nil && !errors.Is(err, errHandedOver) {
			notifySystemd(deployedState(p.serving(), gen, err))
		}
		// The new primary counts a hand-over that succeeded.
		if !errors.Is(err, errHandedOver) {
			p.metrics.deployed(kind, err, time.Since(start), gen)
		}
	}()

	defer p.setDeploying(nil)
	if p.selfChanged() {
		kind = kindPrimary
		p.setDeploying(&UpgradeStatus{Generation: gen, Kind: "primary", Started: start})
		p.log.Info("upgrade started", zap.Int("generation", gen), zap.String("kind", "primary"), zap.Duration("timeout", p.upgradeBound()))
		err := p.upgradeSelf(ctx, gen)
		// A binary written a moment ago may still be open for writing
		// somewhere (golang/go#22315); tableflip reports it as text.
		for end := time.Now().Add(time.Second); err != nil && ctx.Err() == nil && time.Now().Before(end) &&
			strings.Contains(err.Error(), syscall.ETXTBSY.Error()); {
			time.Sleep(20 * time.Millisecond)
			err = p.upgradeSelf(ctx, gen)
		}
		if err == nil {
			p.setServingGen(gen)
			return errHandedOver
		}
		p.log.Error("upgrade aborted", zap.Int("generation", gen), zap.String("reason", "new primary: "+err.Error()))
		return err
	}

	p.setDeploying(&UpgradeStatus{Generation: gen, Kind: "workers", Started: start})
	p.log.Info("upgrade started", zap.Int("generation", gen), zap.String("kind", "workers"))
	path, err := ResolveCommand(p.cfg.Command[0])
	if err != nil {
		p.log.Error("upgrade aborted", zap.Int("generation", gen), zap.String("reason", err.Error()))
		return err
	}
	spec := p.spec(path, gen)
	err = p.pool.Roll(ctx, spec, nil, p.progress(gen))
	if err != nil {
		p.logAbort(gen, err)
		return err
	}
	p.current = spec
	p.setServingGen(gen)
	p.log.Info("upgrade finished", zap.Int("generation", gen), zap.Duration("duration", time.Since(start)))
	return nil
}

func (p *primary) progress(gen int) func(step, steps int) {
	return func(step, steps int) {
		p.deployStep(step, steps)
		p.log.Info("upgrade step", zap.Int("generation", gen), zap.Int("step", step), zap.Int("steps", steps))
	}
}

func (p *primary) logAbort(gen int, err error) {
	fields := []zap.Field{zap.Int("generation", gen), zap.String("reason", err.Error())}
	var se *workerpool.StartError
	if errors.As(err, &se) {
		fields = append(fields, zap.Int("slot", se.Slot), zap.Int("pid", se.Pid),
			zap.String("status", se.Exit.Status), zap.String("stderr", se.Exit.StderrTail))
	}
	p.log.Error("upgrade aborted", fields...)
}

// failureLine makes one line of a failed start, deploy or scale: the
// worker's failure and the last line of its stderr.
func failureLine(err error) string {
	var se *workerpool.StartError
	if errors.As(err, &se) {
		msg := se.Error()
		if last := lastLine(se.Exit.StderrTail); last != "" {
			msg += "; its stderr ends: " + last
		}
		return msg
	}
	return err.Error()
}

// lastLine is the last line of s.
func lastLine(s string) string {
	s = strings.TrimRight(s, "\n")
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return s
}
