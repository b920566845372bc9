//go:build linux

package runtime

import (
	"slices"
	"strings"

	"github.com/handoff-dev/handoff/internal/pin"
	"github.com/handoff-dev/handoff/workerpool"
	"go.uber.org/zap"
)

// What a job does with the generations: pins the command a deploy runs
// (pinCommand), makes a generation's spec, and after the job keeps the
// generations it holds and releases the rest (keepGenerations), which
// installs the rollback job (publishGenerations).

func (p *primary) spec(path string, gen int) *workerpool.Spec {
	args := append([]string(nil), p.cfg.Command...)
	return &workerpool.Spec{Path: path, Args: args, Env: p.env, Generation: gen}
}

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
