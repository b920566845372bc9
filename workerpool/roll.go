package workerpool

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"
)

// Adopt marks every slot as held by a worker of another primary: the pool
// starts no worker of its own and fills the slots by a Roll whose retire
// hook asks that primary to retire its worker. Call it instead of Start.
func (p *Pool) Adopt() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range p.slots[:p.size] {
		s.adopt()
	}
	p.started = true
}

// RetireHook is called by Roll once a new worker is ready in a slot that
// was held by another primary; it returns once that primary has retired
// its worker.
type RetireHook func(ctx context.Context, slot int) error

// Roll replaces the worker of every slot, in order, by one running spec:
// start the new one, wait until it is ready, retire the old one. On the
// first failure it stops and returns a *StartError; the slots already
// rolled keep their new workers, the others their old ones, so Size ready
// workers keep serving. A slot held by another primary (see Adopt) is
// retired there through remote. progress, if not nil, is told each step as
// it begins.
func (p *Pool) Roll(ctx context.Context, spec *Spec, remote RetireHook, progress func(step, steps int)) error {
	return p.roll(ctx, slotRange(0, p.Size()), func(int) *Spec { return spec }, remote, progress)
}

// RollBack refills, one at a time, the slots given away by HandOver with
// each slot's last spec, asking the other primary through remote to retire
// its worker as each new one is ready: a hand-over that failed half-way is
// undone without ever having fewer than Size ready workers.
func (p *Pool) RollBack(ctx context.Context, remote RetireHook) error {
	var slots []int
	p.mu.Lock()
	for i, s := range p.slots {
		if s.state == slotRemote && s.spec != nil {
			slots = append(slots, i)
		}
	}
	p.mu.Unlock()
	return p.roll(ctx, slots, func(i int) *Spec {
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.slots[i].spec
	}, remote, nil)
}

func (p *Pool) roll(ctx context.Context, slots []int, specFor func(int) *Spec, remote RetireHook, progress func(step, steps int)) error {
	for step, i := range slots {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		if progress != nil {
			progress(step+1, len(slots))
		}
		spec := specFor(i)
		var old *worker
		var wasRemote bool
		var remoteSocks *sockRef
		if err := p.launchReady(ctx, i, spec, func(s *slot, w *worker) error {
			remoteSocks = p.remoteSocksLocked(s)
			old, wasRemote = p.installLocked(s, w, spec)
			return nil
		}); err != nil {
			return err
		}
		if old != nil {
			p.retire(old, "replaced")
		}
		if wasRemote && remote != nil {
			if err := p.retireRemote(ctx, i, remoteSocks, remote); err != nil {
				return remoteRetireError(i, err)
			}
		}
	}
	return nil
}

// HandOver retires the worker of slot i because a worker of another
// primary has taken its place; the slot is not refilled until Reclaim.
func (p *Pool) HandOver(i int) error {
	p.mu.Lock()
	if i < 0 || i >= len(p.slots) {
		p.mu.Unlock()
		return fmt.Errorf("no slot %d", i)
	}
	s := p.slots[i]
	old := s.handOver()
	if s.adopted != nil {
		// Handed back to the primary whose worker it adopted, which
		// accepts from these again.
		p.keepSocksLocked(s, s.adopted)
	}
	p.steerLocked()
	p.mu.Unlock()
	if old != nil {
		p.retire(old, "handed over")
	}
	return nil
}

// Reclaim refills, at once, every slot held by another primary (given
// away by HandOver, or held since Adopt): that primary is gone, and its
// workers with it. Each slot runs its last spec; one that never had a
// worker here (adopted) runs spec, and stays empty if spec is nil. A new
// worker holds its slot from its launch, as a restart's does, and is
// restarted if it exits. Reclaim returns once every new worker is ready,
// or has exited (its restart is scheduled), or ReadyTimeout has passed,
// or ctx has ended, with how many are ready.
func (p *Pool) Reclaim(ctx context.Context, spec *Spec) (ready int) {
	var slots []int
	p.mu.Lock()
	for i, s := range p.slots[:p.size] {
		if (s.spec != nil || spec != nil) && s.reclaim() {
			if s.spec == nil {
				s.spec = spec
			}
			// The other primary is gone: the slot's sockets are this
			// pool's now, and its new worker serves what queued on them
			// since their worker died.
			if s.socks != nil {
				s.socks.foreign = false
			}
			slots = append(slots, i)
		}
	}
	p.mu.Unlock()
	var ws []*worker
	for _, i := range slots {
		if w := p.restart(i); w != nil {
			ws = append(ws, w)
		}
	}
	p.waitEachReady(ctx, ws, func(_ *worker, reason string) {
		if reason == "" {
			ready++
		}
	})
	return ready
}

// Remote reports how many slots are held by another primary.
func (p *Pool) Remote() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, s := range p.slots {
		if s.state == slotRemote {
			n++
		}
	}
	return n
}

// ErrStale is returned by Replace when the worker to replace no longer
// holds its slot: it exited, or a deploy or hand-over replaced it.
var ErrStale = errors.New("the worker no longer holds its slot")

// Replace replaces the worker pid of slot i by a new one running the slot's
// spec, the way a roll replaces it: the new worker starts, and only once it
// is ready does it take the slot and the old one retire, so the slot never
// goes without a ready worker. reason is logged with the old worker's
// retirement. The old worker gets the stop signal and drain (DrainTimeout
// if drain <= 0) before SIGKILL: a worker suspected hung gets a short
// drain, so that one that still serves loses nothing and one that is truly
// stuck does not hold its connections for the whole DrainTimeout.
//
// If the new worker fails to start, it is stopped and a *StartError is
// returned, and the old worker keeps the slot. If the old worker lost the
// slot meanwhile, the new one is retired and ErrStale returned. Replace
// must not run at the same time as Start, Roll or another Replace.
func (p *Pool) Replace(ctx context.Context, i, pid int, reason string, drain time.Duration) error {
	p.mu.Lock()
	if i < 0 || i >= len(p.slots) {
		p.mu.Unlock()
		return fmt.Errorf("no slot %d", i)
	}
	s := p.slots[i]
	old := s.cur
	if p.closing {
		p.mu.Unlock()
		return ErrClosing
	}
	// No worker of this pool holds a slot that is empty, restarting or
	// remote; a slot removed by a scale-down since the worker was picked
	// is stale too.
	if i >= p.size || old == nil || old.proc.Pid() != pid || old.retiring {
		p.mu.Unlock()
		return ErrStale
	}
	spec := s.spec
	p.mu.Unlock()

	old.log.Info("worker replacing", zap.String("reason", reason))
	if err := p.launchReady(ctx, i, spec, func(s *slot, w *worker) error {
		// The old worker may have crashed meanwhile; its slot then waits
		// for a restart, which the new worker makes needless.
		if !(s.cur == old || s.vacant()) || p.closing || i >= p.size {
			return ErrStale
		}
		p.installLocked(s, w, s.spec)
		return nil
	}); err != nil {
		return err
	}
	if drain <= 0 || drain > p.cfg.DrainTimeout {
		drain = p.cfg.DrainTimeout
	}
	p.retireWithin(old, reason, drain)
	return nil
}
