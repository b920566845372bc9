package workerpool

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"
)

// A deploy's probation and its roll-back as a whole (RollWith).
//
// While a roll with a MinUptime runs, the pool watches the workers of the
// new generation: one that exits unasked within MinUptime of getting
// ready fails the deploy. Its slot is not restarted (that would run the
// failed build again): the roll stops, and with RollBackTo every slot
// that took a new worker goes back to that spec. The roll itself does not
// wait for probation: the next slot starts as soon as this one is ready.
//
// Every old worker retires as soon as its slot's new worker is ready, the
// last one too, so that once the roll is done only the new version
// answers: probation only watches, and a failure rolls every slot back,
// start-new-then-retire (the dead slot refilled at once). Where the
// caller can keep a worker from new connections (RollOptions.Standby),
// the last slot's old worker instead stands by (started, ready, not
// retired: N+1 workers, as during any step) until the last new worker
// has passed probation, and takes its slot back at once if that worker
// fails it.

// ProbationError is a new worker that exited unasked within its
// probation (RollOptions.MinUptime) after it got ready.
type ProbationError struct {
	Slot, Pid, Generation int
	// ReadyFor is how long it had been ready when it exited.
	ReadyFor  time.Duration
	MinUptime time.Duration
	Exit      Exit
	// Unhealthy: the worker did not exit but failed its health checks
	// (Exit.Status says how); see FailProbation.
	Unhealthy bool
}

func (e *ProbationError) Error() string {
	if e.Unhealthy {
		return fmt.Sprintf("worker %d (pid %d) failed its health checks %s after it was ready (min uptime %s): %s",
			e.Slot, e.Pid, e.ReadyFor.Round(time.Millisecond), e.MinUptime, e.Exit.Status)
	}
	return fmt.Sprintf("worker %d (pid %d) exited %s after it was ready (min uptime %s): %s",
		e.Slot, e.Pid, e.ReadyFor.Round(time.Millisecond), e.MinUptime, e.Exit.Status)
}

// RolledBackError is a roll that failed after some slots had taken a new
// worker, and was rolled back (RollOptions.RollBackTo).
type RolledBackError struct {
	// Cause is why the roll failed: a *StartError, a *ProbationError, or
	// the retire hook's error.
	Cause error
	// Slots is how many slots had taken a new worker and were rolled back.
	Slots int
	// Err is the roll-back's own failure (the previous spec did not start
	// either); nil once no slot runs the new generation any more.
	Err error
}

func (e *RolledBackError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%v; rolling back failed: %v", e.Cause, e.Err)
	}
	return e.Cause.Error()
}

// Unwrap is the cause of the failure.
func (e *RolledBackError) Unwrap() error { return e.Cause }

// RollOptions say how RollWith goes.
type RollOptions struct {
	// Remote retires the worker of a slot held by another primary (see
	// Adopt and Roll); nil when no slot is.
	Remote RetireHook
	// Progress, if not nil, is told each step as it begins.
	Progress func(step, steps int)
	// MinUptime, if positive, is the probation of every new worker: one
	// that exits unasked within MinUptime of getting ready fails the roll
	// (a *ProbationError), and RollWith returns only once the last new
	// worker has been ready that long (or EndProbation is closed).
	MinUptime time.Duration
	// EndProbation, once closed, ends the wait for the last worker's
	// probation as passed: a newer deploy was asked for, which starts at
	// once rather than after this one's probation.
	EndProbation <-chan struct{}
	// RollBackTo, if not nil, is what a failed roll goes back to: every
	// slot that took a new worker gets a worker of RollBackTo again, one
	// at a time, start-new-then-retire (a slot whose new worker died is
	// refilled at once), and RollWith returns a *RolledBackError. Without
	// it the slots keep what they have (the caller undoes the roll, e.g.
	// a new primary handing its slots back).
	RollBackTo *Spec
	// OnRollBack, if not nil, is called as a roll-back begins, with the
	// roll's failure.
	OnRollBack func(cause error)
	// Rolled, if not nil, is called once every slot has taken a new
	// worker (and, but for a standing worker, every old one retires):
	// the new version has taken over, and its probation, if any, begins.
	Rolled func()
	// Standby says that the caller can keep a worker from receiving new
	// connections (a socket of its own, steered away from it). With
	// MinUptime, the last slot's old worker then stands by, kept from new
	// connections, until the last new worker has passed probation, and
	// takes its slot back at once if that worker fails it. Without it
	// (workers sharing one socket, where a worker that runs accepts) the
	// last slot's old worker retires as every other does, so that the old
	// version answers no more once the roll is done.
	Standby bool
	// Surge is how many slots are replaced at once, forward and in a
	// roll-back: up to Surge new workers start together beside the N
	// that serve (never more than N+Surge live, never fewer than N
	// ready), and the old ones retire as their replacements take their
	// slots. 1 or less: one at a time; more than the pool's size: all.
	Surge int
}

// inBatches runs step for each of slots, up to k at once: a batch starts
// once the previous one has ended (begin, if not nil, is told each slot
// of a batch first, in order). Then, in the order of slots, after
// runs for each slot whose step succeeded. It stops after a batch in which
// a step failed (or after failed), and once ctx ends. It returns the slots
// whose step succeeded, in order, and the first error; a step that
// returns errSlotTaken is skipped, not failed.
func inBatches(ctx context.Context, slots []int, k int, begin func(i int), step, after func(i int) error) ([]int, error) {
	k = max(1, k)
	var done []int
	for b := 0; b < len(slots); b += k {
		if ctx.Err() != nil {
			return done, context.Cause(ctx)
		}
		batch := slots[b:min(b+k, len(slots))]
		errs := make([]error, len(batch))
		if begin != nil {
			for _, i := range batch {
				begin(i)
			}
		}
		var wg sync.WaitGroup
		for j, i := range batch {
			wg.Go(func() { errs[j] = step(i) })
		}
		wg.Wait()
		var failed error
		for j, i := range batch {
			switch {
			case errors.Is(errs[j], errSlotTaken):
			case errs[j] != nil:
				failed = cmp.Or(failed, errs[j])
			default:
				done = append(done, i)
				if after != nil {
					failed = cmp.Or(failed, after(i))
				}
			}
		}
		if failed != nil {
			return done, failed
		}
	}
	return done, nil
}

// probation is the state of the roll whose new workers are on
// probation; p.prob, under p.mu.
type probation struct {
	gen int
	d   time.Duration
	// failed is closed at the first failure, which err holds.
	failed chan struct{}
	err    *ProbationError
	// rollingBack: the roll failed and is being undone; a worker of gen
	// that exits now is restarted as any other, with its slot's spec,
	// which is the roll-back's.
	rollingBack bool
	// standing is the last slot's old worker, standing by, running
	// standingSpec: if the slot's new worker fails, it takes the slot
	// back at once, in the same step.
	standing     *worker
	standingSpec *Spec
}

// fails reports whether w, the current worker of its slot, exiting unasked
// now, fails the probation.
func (pr *probation) fails(w *worker, now time.Time) bool {
	return pr != nil && !pr.rollingBack && w.gen == pr.gen && w.ready && now.Sub(w.readyAt) < pr.d
}

// failProbation records that w failed the probation (the first failure
// is the roll's): it exited, or, unhealthy, failed its health checks.
// Call with p.mu held.
func (p *Pool) failProbation(pr *probation, w *worker, exit Exit, readyFor time.Duration, unhealthy bool) {
	w.log.Warn("worker failed probation", zap.Duration("ready_for", readyFor), zap.Duration("min_uptime", pr.d),
		zap.String("status", exit.Status))
	if pr.err == nil {
		pr.err = &ProbationError{Slot: w.slot, Pid: w.proc.Pid(), Generation: w.gen, ReadyFor: readyFor, MinUptime: pr.d,
			Exit: exit, Unhealthy: unhealthy}
		close(pr.failed)
	}
}

// FailProbation fails the probation of the deploy running now because of
// its worker pid, alive but unhealthy (why says how), as its exit would.
// It reports whether pid is a slot's current worker of that deploy, within
// its probation: the deploy then rolls back, which replaces it. Otherwise
// nothing changes.
func (p *Pool) FailProbation(pid int, why string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	for w := range p.all {
		if w.proc.Pid() != pid {
			continue
		}
		if p.slots[w.slot].cur != w || w.retiring || !p.prob.fails(w, now) {
			return false
		}
		p.failProbation(p.prob, w, Exit{Status: why, Code: -1, Uptime: now.Sub(w.started)}, now.Sub(w.readyAt), true)
		return true
	}
	return false
}

// takeBack gives the slot of w, a worker of the new generation that has
// just failed its probation, back to the old worker standing by for it (if
// one does, alive), at once and in the same step: the slot never lacks a
// ready worker. Only a failure does: a new worker that exits after its own
// probation, while the roll's still runs (a restart elsewhere made it
// longer), is an ordinary crash, and its slot is restarted; the standing
// worker retires when the probation ends, as it would have. Call with
// p.mu held.
func (p *Pool) takeBack(pr *probation, w *worker) {
	if pr == nil {
		return
	}
	old := pr.standing
	if old == nil || old.slot != w.slot || w.gen != pr.gen || old.retiring || p.closing {
		return
	}
	if _, alive := p.all[old]; !alive {
		return
	}
	p.installLocked(p.slots[w.slot], old, pr.standingSpec)
	old.log.Info("worker reinstated")
}

// errProbationFailed cancels the steps of a roll that failed probation.
var errProbationFailed = errors.New("a new worker failed its probation")

// RollWith replaces the worker of every slot, in order, by one running
// spec, as Roll does, with the probation and the roll-back o asks for.
// It returns nil once every slot runs spec (and, with a MinUptime, the
// last new worker has passed probation); a *StartError or
// *ProbationError when the roll failed and nothing (or, without
// RollBackTo, what had been rolled) was undone; a *RolledBackError when
// the slots that had taken a new worker were rolled back; or ctx's cause
// if ctx ends first (the pool is then shutting down: nothing is undone).
// Like Roll, it must not run at the same time as Start, Roll, Scale or
// Replace.
func (p *Pool) RollWith(ctx context.Context, spec *Spec, o RollOptions) error {
	var pr *probation
	if o.MinUptime > 0 {
		pr = &probation{gen: spec.Generation, d: o.MinUptime, failed: make(chan struct{})}
		p.mu.Lock()
		p.prob = pr
		p.mu.Unlock()
		defer func() {
			p.mu.Lock()
			p.prob = nil
			p.mu.Unlock()
		}()
	}
	// The steps end as soon as a new worker fails probation.
	rctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if pr != nil {
		go func() {
			select {
			case <-pr.failed:
				cancel(errProbationFailed)
			case <-rctx.Done():
			}
		}()
	}

	size := p.Size()
	var (
		touched   []int   // the slots that took a new worker, in order
		standing  *worker // the last slot's old worker, standing by during probation
		oldSpec   *Spec   // what standing runs
		remoteEnd = -1    // the last slot, held by another primary until probation ends
		lastReady time.Time
		err       error
	)
	slots := make([]int, size)
	olds := make([]*worker, size)
	remote := make([]bool, size)
	remoteSocks := make([]*sockRef, size)
	for i := range slots {
		slots[i] = i
	}
	standsBy := func(i int) bool { return pr != nil && o.Standby && i == size-1 }
	var begin func(i int)
	if o.Progress != nil {
		begin = func(i int) { o.Progress(i+1, size) }
	}
	// A slot held by another primary (a hand-over): that primary retires
	// its worker at once (it is steered away already, and drains it before
	// the stop signal), and the next slot starts while its sockets drain.
	var remoteDrains sync.WaitGroup
	touched, err = inBatches(rctx, slots, o.Surge, begin, func(i int) error {
		return p.launchReady(rctx, i, spec, func(s *slot, w *worker) error {
			// Under the pool's lock.
			was := s.spec
			remoteSocks[i] = p.remoteSocksLocked(s)
			olds[i], remote[i] = p.installLocked(s, w, spec)
			lastReady = later(lastReady, w.readyAt)
			if standsBy(i) && olds[i] != nil {
				oldSpec = was
				pr.standing, pr.standingSpec = olds[i], was
			}
			return nil
		})
	}, func(i int) error {
		if standsBy(i) {
			// Stands by until the probation is over.
			standing = olds[i]
			if remote[i] {
				remoteEnd = i
			}
			return nil
		}
		if olds[i] != nil {
			p.retire(olds[i], "replaced")
		}
		if remote[i] && o.Remote != nil {
			// ctx, not rctx: a retire asked for is seen through.
			err := o.Remote(ctx, i)
			remoteDrains.Go(func() { p.drainRemote(ctx, i, remoteSocks[i]) })
			if err != nil {
				return fmt.Errorf("the other primary did not retire its worker of slot %d: %w", i, err)
			}
		}
		return nil
	})
	remoteDrains.Wait()
	if err == nil && o.Rolled != nil {
		o.Rolled()
	}
	if err == nil && pr != nil {
		err = p.awaitProbation(rctx, pr, lastReady, o.EndProbation)
		if err == nil {
			// Over: from now on a worker of spec that exits is restarted.
			// A failure up to this moment still counts (it may have given
			// the last slot back to the standing worker).
			p.mu.Lock()
			p.prob = nil
			err = pr.failure()
			p.mu.Unlock()
		}
	}
	if err == nil {
		if standing != nil {
			p.retire(standing, "replaced")
		}
		if remoteEnd >= 0 && o.Remote != nil {
			if err := p.retireRemote(ctx, remoteEnd, remoteSocks[remoteEnd], o.Remote); err != nil {
				return fmt.Errorf("the other primary did not retire its worker of slot %d: %w", remoteEnd, err)
			}
		}
		return nil
	}
	if ctx.Err() != nil {
		// Shutting down: every worker drains, the standing one with them.
		return context.Cause(ctx)
	}
	if pr != nil && pr.failure() != nil {
		err = pr.failure()
	}
	if len(touched) == 0 {
		return err
	}
	if o.RollBackTo == nil {
		// The caller undoes the roll; the last slot's old worker serves
		// again meanwhile.
		if standing != nil {
			p.reinstate(standing, oldSpec, spec.Generation)
		}
		return err
	}
	if o.OnRollBack != nil {
		o.OnRollBack(err)
	}
	rbErr := p.rollBack(ctx, pr, spec.Generation, o.RollBackTo, touched, standing, o.Surge)
	return &RolledBackError{Cause: err, Slots: len(touched), Err: rbErr}
}

// later is the later of a and b.
func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// failure is the probation's failure, if any.
func (pr *probation) failure() error {
	select {
	case <-pr.failed:
		return pr.err
	default:
		return nil
	}
}

// awaitProbation returns nil once every current worker of pr's generation
// has been ready for pr.d (the last one got ready at lastReady, unless a
// restart since made one ready later), or end is closed; pr's failure as
// soon as a worker fails it; ctx's cause if ctx ends first.
func (p *Pool) awaitProbation(ctx context.Context, pr *probation, lastReady time.Time, end <-chan struct{}) error {
	for {
		p.mu.Lock()
		for _, s := range p.slots[:p.size] {
			if w := s.cur; w != nil && w.gen == pr.gen && w.ready && w.readyAt.After(lastReady) {
				lastReady = w.readyAt
			}
		}
		p.mu.Unlock()
		wait := time.Until(lastReady.Add(pr.d))
		if wait <= 0 {
			// A failure seen at the very end still counts.
			return pr.failure()
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-end:
			t.Stop()
			return pr.failure()
		case <-ctx.Done():
			t.Stop()
			if f := pr.failure(); f != nil {
				return f
			}
			return context.Cause(ctx)
		}
	}
}

// reinstate makes the old worker that stood by, running spec, the last
// slot's worker again, retiring the new worker of generation gen that
// replaced it (if it still lives). It reports whether it did: the old
// worker may have exited meanwhile.
func (p *Pool) reinstate(old *worker, spec *Spec, gen int) bool {
	p.mu.Lock()
	s := p.slots[old.slot]
	if s.cur == old {
		// It took the slot back as the new worker failed.
		p.mu.Unlock()
		return true
	}
	_, alive := p.all[old]
	if !alive || old.retiring || p.closing || old.slot >= p.size || (s.cur != nil && s.cur.gen != gen) {
		p.mu.Unlock()
		p.retire(old, "replaced")
		return false
	}
	replaced, _ := p.installLocked(s, old, spec)
	p.steerLocked()
	p.mu.Unlock()
	old.log.Info("worker reinstated")
	if replaced != nil {
		p.retire(replaced, "rolled back")
	}
	return true
}

// rollBack returns every slot of touched to spec to, keeping as many ready
// workers as it can and never more than one worker beyond the slots:
//
//  1. From now on a crash restart of these slots runs to.
//  2. Slots whose new worker died get a worker of to at once, all
//     together (each fills an empty slot, as a crash restart would), and
//     rollBack waits until they are ready.
//  3. The last slot's old worker, standing by, takes its slot back; that
//     slot's new worker retires.
//  4. The other slots, one at a time, get a worker of to, which takes the
//     slot once ready; then the new worker retires.
//
// It returns the first failure of a worker of to; the slots not rolled
// back by then keep their new worker, whose restarts run to.
func (p *Pool) rollBack(ctx context.Context, pr *probation, gen int, to *Spec, touched []int, standing *worker, surge int) error {
	p.mu.Lock()
	if pr != nil {
		pr.rollingBack = true
	}
	var vacant []int
	for _, i := range touched {
		s := p.slots[i]
		if i >= p.size {
			continue
		}
		if s.spec != nil && s.spec.Generation == gen {
			s.spec = to
		}
		if s.state == slotRestarting && s.restart == nil {
			// Its worker failed probation: no restart was scheduled.
			vacant = append(vacant, i)
		}
	}
	p.mu.Unlock()

	var failed error
	var refills []*worker
	for _, i := range vacant {
		w, err := p.launch(i, to, slotServing)
		switch {
		case errors.Is(err, errSlotTaken):
		case err != nil:
			failed = cmp.Or(failed, err)
			p.mu.Lock()
			if s := p.slots[i]; s.state == slotRestarting && s.restart == nil && !p.closing {
				s.failures++
				p.scheduleLocked(i, Backoff(s.failures, p.cfg.BackoffMin, p.cfg.BackoffMax))
			}
			p.mu.Unlock()
		default:
			refills = append(refills, w)
		}
	}
	deadline := time.NewTimer(p.cfg.ReadyTimeout)
	defer deadline.Stop()
	for _, w := range refills {
		// One that exits is restarted as any other; one that is not ready
		// in time keeps its slot, as a restart would.
		if reason := p.waitReady(ctx, w, deadline.C); reason != "" && failed == nil {
			se := &StartError{Slot: w.slot, Pid: w.proc.Pid(), Reason: reason}
			if reason == "exited" {
				se.Exit = w.proc.Exit()
			}
			failed = se
		}
	}
	if standing != nil {
		p.reinstate(standing, to, gen)
	}
	if failed != nil {
		return failed
	}
	olds := map[int]*worker{}
	var mu sync.Mutex
	_, err := inBatches(ctx, touched, surge, nil, func(i int) error {
		p.mu.Lock()
		w := p.slots[i].cur
		due := i < p.size && w != nil && w.gen == gen && !w.retiring
		p.mu.Unlock()
		if !due {
			return errSlotTaken
		}
		return p.launchReady(ctx, i, to, func(s *slot, nw *worker) error {
			if p.closing {
				return ErrClosing
			}
			if c := s.cur; c != nil && c.gen != gen && (c.ready || c.retiring) {
				// A restart refilled it meanwhile, and serves.
				return errSlotTaken
			}
			// A restart that is not ready yet gives way to nw, which is:
			// the slot is not left without a ready worker meanwhile.
			old, _ := p.installLocked(s, nw, to)
			mu.Lock()
			olds[i] = old
			mu.Unlock()
			return nil
		})
	}, func(i int) error {
		switch old := olds[i]; {
		case old == nil:
		case old.gen != gen:
			p.retire(old, "not needed: a ready worker took its slot")
		default:
			p.retire(old, "rolled back")
		}
		return nil
	})
	return err
}

// Specs returns the spec of every slot (what a restart of it runs), one
// per slot that has one: with the specs of the generations the primary
// keeps, what must stay pinned.
func (p *Pool) Specs() []*Spec {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []*Spec
	for _, s := range p.slots {
		if s.spec != nil {
			out = append(out, s.spec)
		}
	}
	return out
}
