//go:build linux

package runtime

import (
	"context"
	"fmt"

	"github.com/handoff-dev/handoff/workerpool"
	"go.uber.org/zap"
)

// scaleBy makes the job of a TTIN (+1) or TTOU (-1).
func (p *primary) scaleBy(delta int) func(context.Context) error {
	return p.scaleJob(0, delta, nil)
}

// scaleJob makes the job of a scale to n workers, or by delta when delta
// is not 0; the number asked for is stored in *to (if not nil).
func (p *primary) scaleJob(n, delta int, to *int) func(context.Context) error {
	return func(ctx context.Context) error {
		from := p.pool.Size()
		want := n
		if delta != 0 {
			want = from + delta
		}
		if to != nil {
			*to = want
		}
		if want < 1 || want > workerpool.MaxSize {
			err := fmt.Errorf("cannot scale from %d to %d workers: the number must be from 1 to %d", from, want, workerpool.MaxSize)
			p.log.Warn("scale refused", zap.Int("from", from), zap.Int("to", want), zap.String("reason", err.Error()))
			return err
		}
		if want == from {
			return nil
		}
		p.log.Info("scale started", zap.Int("from", from), zap.Int("to", want))
		// A slot removed may have held the last reference to a pin.
		defer p.releasePins()
		if err := p.pool.Scale(ctx, want, p.cur.spec); err != nil {
			p.log.Error("scale aborted", zap.Int("from", from), zap.Int("to", want), zap.String("reason", failureLine(err)))
			return err
		}
		p.log.Info("scale finished", zap.Int("from", from), zap.Int("to", want))
		return nil
	}
}
