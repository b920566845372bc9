//go:build linux

package runtime

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"go.uber.org/zap"

	"github.com/handoff-dev/handoff/internal/control"
	"github.com/handoff-dev/handoff/internal/pin"
)

// pinCommand pins the executable generation p.gen runs (internal/pin),
// says in the log what it pins, and keeps it among the pins the primary
// holds. The workers' PATH finds a script's "#!/usr/bin/env NAME". A file
// one of those pins holds unchanged (an interpreter, a command deployed
// again) is not read again.
func (p *primary) pinCommand(path string) (*pin.File, error) {
	f, err := pin.Pin(path, pin.Options{PATH: envValue(p.env, "PATH"), Known: p.pins.known()})
	if err != nil {
		return nil, err
	}
	p.log.Info("command pinned", zap.Int("generation", p.gen), zap.String("path", path), zap.String("pinned", f.Describe()))
	p.pins.keep(f)
	return f, nil
}

// envValue is the value of key in env ("" without it).
func envValue(env []string, key string) string {
	for _, kv := range slices.Backward(env) {
		if k, v, ok := strings.Cut(kv, "="); ok && k == key {
			return v
		}
	}
	return ""
}

// releasePins closes the pins that neither a generation kept nor a slot
// (whose restart runs its spec) refers to any more. Jobs run one at a
// time: call it at the end of one. A launch that races the close fails
// with pin.ErrClosed as a start failure, never a crash.
func (p *primary) releasePins() {
	used := map[*pin.File]bool{}
	for _, g := range []*generation{p.cur, p.prev} {
		if g != nil && g.pin() != nil {
			used[g.pin()] = true
		}
	}
	for _, s := range p.pool.Specs() {
		if f, ok := s.Pin.(*pin.File); ok {
			used[f] = true
		}
	}
	p.pins.closeUnused(used)
}

// keepGenerations makes what the primary holds follow its generation
// records, after a start, a take-over or a deploy: the pins no longer
// needed close, and status shows the records.
//
// tableflip keeps its own descriptors of what a self-upgrade exported or
// handed over (it has no way to drop one; a later export under the same
// key replaces it, see exportGenerations): a primary that has been through
// a self-upgrade, or tried one, holds those of at most two generations
// beyond its own until the next one.
func (p *primary) keepGenerations() {
	p.releasePins()
	p.publishGenerations()
}

// publishGenerations shows the primary's generation records in status
// and makes a rollback possible when a previous one is kept. Call it from
// a job (or before the loop runs).
func (p *primary) publishGenerations() {
	p.gens.set(p.cur.status(), p.prev.status())
	p.gens.setPins(p.cur.pinOrNil(), p.prev.pinOrNil())
	if p.prev != nil {
		p.gens.setRollback(p.rollbackPrevious)
	} else {
		p.gens.setRollback(nil)
	}
}

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

// Rollback answers a rollback request once its job has run: done, with the
// generation serving; refused (nothing to roll back to); or aborted, with
// the reason.
func (h controlHandler) Rollback(ctx context.Context) control.Reply {
	done := make(chan error, 1)
	err, retry := h.await(ctx, request{op: opRollback, run: h.p.rollbackJob(), done: done}, done)
	switch {
	case retry:
		return retryReply
	case errors.Is(err, errNoPrevious), errors.Is(err, errNotAsDeployed):
		return control.Reply{Error: "refused: " + err.Error()}
	}
	return h.deployReply(err)
}
