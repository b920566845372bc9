//go:build linux

package runtime

import (
	"context"
	"errors"
	"sync"

	"go.uber.org/zap"

	"github.com/handoff-dev/handoff/internal/pin"
	"github.com/handoff-dev/handoff/workerpool"
)

// generation is one generation the primary keeps: its number and what its
// workers run, the pinned file included (spec.Pin).
type generation struct {
	gen  int
	spec *workerpool.Spec
	// rollbackOf is the generation whose file a rollback deployed again
	// as this one; 0 otherwise.
	rollbackOf int
}

// pin is the file g pinned, or nil.
func (g *generation) pin() *pin.File {
	f, _ := g.spec.Pin.(*pin.File)
	return f
}

// status describes g for status (nil: none).
func (g *generation) status() *GenerationStatus {
	if g == nil {
		return nil
	}
	var st *GenerationStatus
	if f := g.pin(); f != nil {
		st = generationStatus(g.gen, f.Identity())
	} else {
		st = &GenerationStatus{Generation: g.gen, Path: g.spec.Path}
	}
	st.RollbackOf = g.rollbackOf
	return st
}

// sameBuild reports whether a and b run the same file: the same path with
// the same content (or, for a file the primary may not read, the same
// inode, size and modification time). The path counts: the launcher
// script of each release directory is often the same text, but each runs
// the code next to it.
func sameBuild(a, b *generation) bool {
	if a == nil || b == nil || a.pin() == nil || b.pin() == nil || a.spec.Path != b.spec.Path {
		return false
	}
	return a.pin().Same(b.pin())
}

// pinCommand pins the executable a generation runs (internal/pin) and
// keeps it among the pins the primary holds.
func (p *primary) pinCommand(path string) (*pin.File, error) {
	f, err := pin.Pin(path, pin.Options{})
	if err != nil {
		return nil, err
	}
	p.keepPin(f)
	return f, nil
}

func (p *primary) keepPin(f *pin.File) {
	p.pinsMu.Lock()
	defer p.pinsMu.Unlock()
	if p.pins == nil {
		p.pins = map[*pin.File]struct{}{}
	}
	p.pins[f] = struct{}{}
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
	p.pinsMu.Lock()
	defer p.pinsMu.Unlock()
	for f := range p.pins {
		if !used[f] {
			f.Close()
			delete(p.pins, f)
		}
	}
}

// closePins closes every pin, as Run returns.
func (p *primary) closePins() {
	p.pinsMu.Lock()
	defer p.pinsMu.Unlock()
	for f := range p.pins {
		f.Close()
	}
	p.pins = nil
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

// generations is what status and `handoff rollback` know of the
// generations the primary keeps: the current one (what the last start or
// deploy that finished runs) and the previous one (what a rollback
// deploys again). Its methods are safe for concurrent use; the zero value
// keeps nothing. The primary's loop publishes its generation records here
// after every job (publishGenerations) and installs the rollback job
// (setRollback); without both, a rollback is refused with errNoPrevious.
type generations struct {
	mu       sync.Mutex
	current  *GenerationStatus
	previous *GenerationStatus
	// rollback deploys the previous generation again, as a job of the
	// primary's loop; nil while there is nothing to roll back to.
	rollback func(context.Context) error
}

// set records (copies of) the current and previous generations (nil:
// none).
func (g *generations) set(current, previous *GenerationStatus) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.current, g.previous = clone(current), clone(previous)
}

func clone(g *GenerationStatus) *GenerationStatus {
	if g == nil {
		return nil
	}
	c := *g
	return &c
}

// setRollback installs the job that deploys the previous generation again
// (nil: none).
func (g *generations) setRollback(run func(context.Context) error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.rollback = run
}

// status is what `handoff status` shows.
func (g *generations) status() GenerationsStatus {
	g.mu.Lock()
	defer g.mu.Unlock()
	return GenerationsStatus{Current: clone(g.current), Previous: clone(g.previous)}
}

// generationStatus describes generation gen running the pinned file id.
func generationStatus(gen int, id pin.Identity) *GenerationStatus {
	return &GenerationStatus{Generation: gen, Path: id.Path, Size: id.Size, ModTime: id.ModTime, SHA256: id.SHA256}
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

// rollback answers a rollback request once its job has run: done, with the
// generation serving; refused (nothing to roll back to); or aborted, with
// the reason.
func (s *controlServer) rollback() ControlReply {
	done := make(chan error, 1)
	err, retry := s.await(request{op: opRollback, run: s.p.rollbackJob(), done: done}, done)
	switch {
	case retry:
		return s.retryReply()
	case errors.Is(err, errNoPrevious):
		return ControlReply{Error: "refused: " + err.Error()}
	}
	return s.deployReply(err)
}
