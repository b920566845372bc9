//go:build linux

package runtime

import (
	"context"
	"errors"
	"strconv"
	"sync"

	"go.uber.org/zap"

	"github.com/handoff-dev/handoff/internal/pin"
	"github.com/handoff-dev/handoff/workerpool"
)

// errNoPrevious refuses a rollback when the primary keeps no generation
// before the current one.
var errNoPrevious = errors.New("no previous generation to roll back to")

// generations is what the primary keeps of its generations for status
// and for `handoff rollback`: the current one (what the last start or
// deploy that finished runs) and the previous one. Its methods are safe
// for concurrent use; the zero value keeps nothing.
//
// The primary records the current generation's path as each deploy
// finishes (noteServing). Deploys that pin their executable (internal/pin)
// replace both entries with the pinned files' identities (set), and
// install the job that deploys the previous generation again
// (setRollback); without it, a rollback is refused with errNoPrevious.
type generations struct {
	mu       sync.Mutex
	current  *GenerationStatus
	previous *GenerationStatus
	// rollback deploys the previous generation again, as a deploy job of
	// the primary's loop; nil while there is nothing to roll back to.
	rollback func(context.Context) error
}

// noteServing records spec as the current generation once its deploy has
// finished, unless that generation is recorded already (by set, with its
// pinned file's identity).
func (g *generations) noteServing(spec *workerpool.Spec) {
	if spec == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.current == nil || g.current.Generation != spec.Generation {
		g.current = &GenerationStatus{Generation: spec.Generation, Path: spec.Path}
	}
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
	err, retry := s.await(request{op: "rollback", run: s.p.rollbackJob(), done: done}, done)
	switch {
	case retry:
		return s.retryReply()
	case errors.Is(err, errNoPrevious):
		return ControlReply{Error: "refused: " + err.Error()}
	case err != nil:
		return ControlReply{Error: "aborted: " + failureLine(err)}
	}
	gen := s.p.serving()
	return ControlReply{OK: true, Generation: gen, Message: "done: generation " + strconv.Itoa(gen) + " serving"}
}
