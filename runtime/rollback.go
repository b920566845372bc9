//go:build linux

package runtime

import (
	"context"
	"errors"
	"fmt"

	"go.uber.org/zap"
)

// rollbackPrevious is the job of `handoff rollback`: a deploy, with its
// probation and roll-back, of the previous generation's pinned file, as a
// new generation. On success the generation it replaced is the previous
// one (a second rollback goes forward again).
func (p *primary) rollbackPrevious(ctx context.Context) error {
	prev := p.prev
	if prev == nil {
		return errNoPrevious
	}
	if err := runsAsDeployed(prev); err != nil {
		p.log.Warn("rollback refused", zap.String("reason", err.Error()))
		return err
	}
	p.gen++
	gen := p.gen
	spec := *prev.spec
	spec.Generation = gen
	next := &generation{gen: gen, spec: &spec, rollbackOf: prev.gen}
	d := p.beginDeploy(gen, kindRollback, zap.Int("rollback_of", prev.gen), zap.String("path", spec.Path))
	return p.rollGeneration(ctx, d, next, false)
}

// errNoPrevious refuses a rollback when the primary keeps no generation
// before the current one.
var errNoPrevious = errors.New("no previous generation to roll back to")

// errNotAsDeployed refuses a rollback to a generation that cannot run as
// it was deployed.
var errNotAsDeployed = errors.New("the previous generation cannot run as it was deployed")

// runsAsDeployed checks that a rollback to g would run what g ran: a #!
// script runs from its path, so that path must still hold the script g
// deployed.
func runsAsDeployed(g *generation) error {
	f := g.pin()
	if f == nil {
		return nil
	}
	note, err := f.ScriptChanged()
	if err == nil && note == "" {
		return nil
	}
	if err != nil {
		note = err.Error()
	}
	return fmt.Errorf("%w: generation %d is a script, which runs from its path, and %s; restore it, or deploy what is there with a reload (keep each release's script in a directory of its own to roll back to it)",
		errNotAsDeployed, g.gen, note)
}

// rollbackJob makes the job of a rollback request: the installed rollback
// job, run in turn with deploys and scaling (never beside them), or a
// refusal when there is no previous generation.
func (p *primary) rollbackJob() func(context.Context) error {
	return func(ctx context.Context) error {
		p.gens.mu.Lock()
		run := p.gens.rollback
		if p.gens.previous == nil {
			run = nil
		}
		p.gens.mu.Unlock()
		if run == nil {
			p.log.Warn("rollback refused", zap.String("reason", errNoPrevious.Error()))
			return errNoPrevious
		}
		return run(ctx)
	}
}
