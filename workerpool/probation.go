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

// A deploy's roll with its probation and roll-back (RollWith), phase by
// phase. One rollState holds the roll; RollWith's goroutine runs these
// phases in order, each a method of rollState (only the steps of a batch
// run beside each other). "Sends" names the pool's log events (each with
// the worker's slot, pid and generation) and RollOptions' callbacks.
//
//  1. beginRoll: with a MinUptime, opens the probation (Pool.prob: from
//     now on monitor judges the exits of the new generation) and starts a
//     watcher that cancels the forward steps at its first failure.
//     Sends nothing. Ends at once.
//  2. replaceSlots: every slot, Surge at a time (inBatches), through
//     startReplacement (a new worker starts, is waited for, and takes the
//     slot: install, steering) and retireOld (the old worker retires; or,
//     the last slot's with Standby and a MinUptime, stands by; a slot
//     held by another primary: the Remote hook, then its sockets drain).
//     Sends Progress(step, steps) as a batch begins; "worker spawned",
//     "worker ready", "worker retiring" ("replaced"; "not started: …" for
//     a new worker that exits or is not ready within ReadyTimeout), "slot
//     socket not drained"; Rolled() once every slot is replaced.
//     Ends when every slot is replaced, or at the first failure: a
//     *StartError, the Remote hook's error, ctx done, a probation failure
//     (errProbationFailed).
//  3. passProbation (with a MinUptime): waits until the last new worker
//     has been ready MinUptime, then closes the probation. Meanwhile
//     monitor fails it for a new worker that exits unasked within its
//     MinUptime (FailProbation for one that fails its health checks),
//     restarts no such worker, and gives its slot back to the standing
//     worker, if any (takeBack). Sends "worker exited", "worker failed
//     probation", "worker reinstated". Ends when that time has passed or
//     EndProbation is closed (passed), at a failure (*ProbationError), or
//     when ctx is done.
//  4. commit: the standing worker retires; the other primary retires its
//     worker of the last slot (the Remote hook). Sends "worker retiring"
//     ("replaced"). RollWith returns nil (or the hook's error).
//
// On a failure of 2 or 3:
//
//  5. settle: picks the failure to report (the probation's, if any) and
//     whether to roll back: not when ctx is done (shutting down: ctx's
//     cause, nothing undone), nor when no slot took a new worker, nor
//     without RollBackTo (the caller undoes the roll; the standing worker
//     takes its slot back first: reinstate). Sends "worker reinstated",
//     "worker retiring" ("rolled back"). RollWith returns the failure.
//  6. rollBack: OnRollBack(cause), then retarget (restarts of the touched
//     slots run RollBackTo; exits no longer fail the probation), refill
//     (slots whose new worker failed probation get a worker of RollBackTo
//     at once, all together, waited for under one ReadyTimeout),
//     reinstate (the standing worker takes its slot back), replaceBack
//     (the other slots, Surge at a time, start-new-then-retire). Sends
//     "worker spawned", "worker ready", "worker restart scheduled" (a
//     refill that cannot start), "worker reinstated", "worker retiring"
//     ("rolled back"; "not needed: a ready worker took its slot" for a
//     restart not ready yet). Ends when every slot is back, or at the
//     first failure of a worker of RollBackTo, or when ctx is done.
//     RollWith returns a *RolledBackError.
//  7. end, whatever the outcome: the watcher stops; the probation, if
//     still open, closes.
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
// exits (one failed for its health is replaced in the roll-back).

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
	// takes its slot back at once if that worker exits (one failed for
	// its health, FailProbation, is replaced in the roll-back). Without it
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
//
// It runs the phases listed at the top of this file, in order.
func (p *Pool) RollWith(ctx context.Context, spec *Spec, o RollOptions) error {
	r := p.beginRoll(ctx, spec, o)
	defer r.end()
	err := r.replaceSlots()
	if err == nil {
		err = r.passProbation()
	}
	if err == nil {
		return r.commit()
	}
	undo, cause := r.settle(err)
	if !undo {
		return cause
	}
	return r.rollBack(cause)
}

// rollState is one RollWith: what it was asked, and the state its phases
// hand on to each other. RollWith's goroutine runs the phases one after
// the other; the steps of a batch run beside each other, and write only
// their own slot's entries, or under p.mu.
type rollState struct {
	p    *Pool
	spec *Spec
	o    RollOptions
	size int
	// ctx is the caller's: the retire hooks, the drains of the other
	// primary's sockets and the roll-back run under it. rctx ends with it
	// or at the first probation failure (cancel): the forward steps run
	// under rctx.
	ctx, rctx context.Context
	cancel    context.CancelCauseFunc
	pr        *probation // nil without a MinUptime

	// Per slot, set under p.mu as its new worker takes it: the worker it
	// replaced, whether that one was another primary's, and its sockets.
	olds        []*worker
	remote      []bool
	remoteSocks []*sockRef
	lastReady   time.Time // when the last new worker got ready

	touched      []int          // the slots that took a new worker, in order
	standing     *worker        // the last slot's old worker, standing by during probation
	oldSpec      *Spec          // what standing runs
	remoteEnd    int            // the last slot, held by another primary until probation ends; -1 if none
	remoteDrains sync.WaitGroup // the other primary's sockets of the slots replaced, draining
}

// beginRoll is phase 1: with a MinUptime, the probation opens (p.prob),
// and a watcher cancels the forward steps at its first failure.
func (p *Pool) beginRoll(ctx context.Context, spec *Spec, o RollOptions) *rollState {
	r := &rollState{p: p, spec: spec, o: o, ctx: ctx, remoteEnd: -1}
	if o.MinUptime > 0 {
		r.pr = &probation{gen: spec.Generation, d: o.MinUptime, failed: make(chan struct{})}
		p.mu.Lock()
		p.prob = r.pr
		p.mu.Unlock()
	}
	// The steps end as soon as a new worker fails probation.
	rctx, cancel := context.WithCancelCause(ctx)
	r.rctx, r.cancel = rctx, cancel
	if pr := r.pr; pr != nil {
		go func() {
			select {
			case <-pr.failed:
				cancel(errProbationFailed)
			case <-rctx.Done():
			}
		}()
	}
	r.size = p.Size()
	r.olds = make([]*worker, r.size)
	r.remote = make([]bool, r.size)
	r.remoteSocks = make([]*sockRef, r.size)
	return r
}

// end is the last phase, whatever the outcome: the watcher stops, and the
// probation, if still open, closes.
func (r *rollState) end() {
	r.cancel(nil)
	if r.pr != nil {
		r.p.mu.Lock()
		r.p.prob = nil
		r.p.mu.Unlock()
	}
}

// standsBy reports whether slot i's old worker stands by until the
// probation is over rather than retiring: the last slot's, with Standby.
func (r *rollState) standsBy(i int) bool {
	return r.pr != nil && r.o.Standby && i == r.size-1
}

// replaceSlots is phase 2: every slot, Surge at a time (inBatches), gets
// its replacement (startReplacement), then its old worker retires
// (retireOld). Once every slot is replaced, and the other primary's
// sockets of the slots it held have drained, Rolled is called.
func (r *rollState) replaceSlots() error {
	var begin func(i int)
	if r.o.Progress != nil {
		begin = func(i int) { r.o.Progress(i+1, r.size) }
	}
	var err error
	r.touched, err = inBatches(r.rctx, slotRange(0, r.size), r.o.Surge, begin, r.startReplacement, r.retireOld)
	r.remoteDrains.Wait()
	if err == nil && r.o.Rolled != nil {
		r.o.Rolled()
	}
	return err
}

// startReplacement is phase 2's first step for slot i: a new worker of
// the roll's spec starts, and once it is ready takes the slot (see
// launchReady); the slot's old worker is noted, for retireOld.
func (r *rollState) startReplacement(i int) error {
	return r.p.launchReady(r.rctx, i, r.spec, func(s *slot, w *worker) error {
		// Under the pool's lock.
		was := s.spec
		r.remoteSocks[i] = r.p.remoteSocksLocked(s)
		r.olds[i], r.remote[i] = r.p.installLocked(s, w, r.spec)
		r.lastReady = later(r.lastReady, w.readyAt)
		if r.standsBy(i) && r.olds[i] != nil {
			r.oldSpec = was
			r.pr.standing, r.pr.standingSpec = r.olds[i], was
		}
		return nil
	})
}

// retireOld is phase 2's second step for slot i, once its new worker
// holds it: its old worker retires, or stands by until the probation is
// over. A slot held by another primary (a hand-over): that primary
// retires its worker at once (it is steered away already, and drains it
// before the stop signal), and the next slot starts while its sockets
// drain.
func (r *rollState) retireOld(i int) error {
	if r.standsBy(i) {
		// Stands by until the probation is over.
		r.standing = r.olds[i]
		if r.remote[i] {
			r.remoteEnd = i
		}
		return nil
	}
	if r.olds[i] != nil {
		r.p.retire(r.olds[i], "replaced")
	}
	if r.remote[i] && r.o.Remote != nil {
		// ctx, not rctx: a retire asked for is seen through.
		err := r.o.Remote(r.ctx, i)
		r.remoteDrains.Go(func() { r.p.drainRemote(r.ctx, i, r.remoteSocks[i]) })
		if err != nil {
			return remoteRetireError(i, err)
		}
	}
	return nil
}

// passProbation is phase 3, with a MinUptime: it waits until the last new
// worker has been ready MinUptime (see awaitProbation), then closes the
// probation. A failure up to that moment still counts (it may have given
// the last slot back to the standing worker).
func (r *rollState) passProbation() error {
	if r.pr == nil {
		return nil
	}
	if err := r.p.awaitProbation(r.rctx, r.pr, r.lastReady, r.o.EndProbation); err != nil {
		return err
	}
	// Over: from now on a worker of spec that exits is restarted.
	r.p.mu.Lock()
	defer r.p.mu.Unlock()
	r.p.prob = nil
	return r.pr.failure()
}

// commit is phase 4, once the roll and its probation passed: the standing
// worker retires, and the other primary retires its worker of the last
// slot.
func (r *rollState) commit() error {
	if r.standing != nil {
		r.p.retire(r.standing, "replaced")
	}
	if i := r.remoteEnd; i >= 0 && r.o.Remote != nil {
		if err := r.p.retireRemote(r.ctx, i, r.remoteSocks[i], r.o.Remote); err != nil {
			return remoteRetireError(i, err)
		}
	}
	return nil
}

// settle is phase 5, after err failed the roll: it reports whether to
// roll back, and the failure to report (a probation failure rather than
// what it cut short). Shutting down, nothing is undone; nor when no slot
// took a new worker; without RollBackTo, the caller undoes the roll, and
// the standing worker takes its slot back.
func (r *rollState) settle(err error) (undo bool, cause error) {
	if r.ctx.Err() != nil {
		// Shutting down: every worker drains, the standing one with them.
		return false, context.Cause(r.ctx)
	}
	if r.pr != nil && r.pr.failure() != nil {
		err = r.pr.failure()
	}
	if len(r.touched) == 0 {
		return false, err
	}
	if r.o.RollBackTo == nil {
		// The caller undoes the roll; the last slot's old worker serves
		// again meanwhile.
		if r.standing != nil {
			r.p.reinstate(r.standing, r.oldSpec, r.spec.Generation)
		}
		return false, err
	}
	return true, err
}

// remoteRetireError is the failure of the other primary to retire its
// worker of slot i: going on could leave both primaries serving the slot.
func remoteRetireError(i int, err error) error {
	return fmt.Errorf("the other primary did not retire its worker of slot %d: %w", i, err)
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

// rollBack is phase 6: every slot the roll touched goes back to
// RollBackTo, keeping as many ready workers as it can and never more than
// one worker beyond the slots, in four steps (see the top of this file).
// Its *RolledBackError holds the first failure of a worker of RollBackTo;
// the slots not rolled back by then keep their new worker, whose restarts
// run RollBackTo.
func (r *rollState) rollBack(cause error) error {
	if r.o.OnRollBack != nil {
		r.o.OnRollBack(cause)
	}
	err := r.refill(r.retarget())
	if r.standing != nil {
		r.p.reinstate(r.standing, r.o.RollBackTo, r.spec.Generation)
	}
	if err == nil {
		err = r.replaceBack()
	}
	return &RolledBackError{Cause: cause, Slots: len(r.touched), Err: err}
}

// retarget is the roll-back's first step: the probation no longer fails
// a worker that exits, and every touched slot that runs the roll's
// generation gets RollBackTo as its spec. It returns the slots left
// without a worker: their worker failed probation, and no restart was
// scheduled.
func (r *rollState) retarget() (vacant []int) {
	p := r.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if r.pr != nil {
		r.pr.rollingBack = true
	}
	for _, i := range r.touched {
		s := p.slots[i]
		if i >= p.size {
			continue
		}
		if s.spec != nil && s.spec.Generation == r.spec.Generation {
			s.spec = r.o.RollBackTo
		}
		if s.state == slotRestarting && s.restart == nil {
			// Its worker failed probation: no restart was scheduled.
			vacant = append(vacant, i)
		}
	}
	return vacant
}

// refill is the roll-back's second step: a worker of RollBackTo for each
// of the vacant slots, all at once, holding its slot from its launch as a
// restart's does; one that cannot be launched is restarted after its
// backoff. It returns the first failure, once every one launched is ready
// (see awaitRefills).
func (r *rollState) refill(vacant []int) error {
	p := r.p
	var failed error
	var refills []*worker
	for _, i := range vacant {
		w, err := p.launch(i, r.o.RollBackTo, slotServing)
		switch {
		case errors.Is(err, errSlotTaken):
		case err != nil:
			failed = cmp.Or(failed, err)
			p.mu.Lock()
			if s := p.slots[i]; s.state == slotRestarting && s.restart == nil && !p.closing {
				s.failures++
				p.scheduleBackoffLocked(i)
			}
			p.mu.Unlock()
		default:
			refills = append(refills, w)
		}
	}
	return cmp.Or(failed, p.awaitRefills(r.ctx, refills))
}

// awaitRefills waits, under one ReadyTimeout, until each of ws, the
// refill of a vacant slot, is ready, and returns the first that is not as
// a *StartError. One that exits is restarted as any other; one that is
// not ready in time keeps its slot, as a restart would.
func (p *Pool) awaitRefills(ctx context.Context, ws []*worker) error {
	var failed error
	p.waitEachReady(ctx, ws, func(w *worker, reason string) {
		if reason != "" && failed == nil {
			se := &StartError{Slot: w.slot, Pid: w.proc.Pid(), Reason: reason}
			if reason == "exited" {
				se.Exit = w.proc.Exit()
			}
			failed = se
		}
	})
	return failed
}

// replaceBack is the roll-back's last step: every touched slot whose
// worker still runs the roll's generation, Surge at a time, gets a worker
// of RollBackTo, start-new-then-retire. The new worker it replaces
// retires as rolled back; a restart of the slot that was not ready yet
// retires as not needed.
func (r *rollState) replaceBack() error {
	gen := r.spec.Generation
	olds := map[int]*worker{}
	var mu sync.Mutex
	_, err := inBatches(r.ctx, r.touched, r.o.Surge, nil, func(i int) error {
		old, err := r.replaceBackSlot(i)
		mu.Lock()
		olds[i] = old
		mu.Unlock()
		return err
	}, func(i int) error {
		switch old := olds[i]; {
		case old == nil:
		case old.gen != gen:
			r.p.retire(old, "not needed: a ready worker took its slot")
		default:
			r.p.retire(old, "rolled back")
		}
		return nil
	})
	return err
}

// replaceBackSlot starts a worker of RollBackTo for slot i, if its worker
// still runs the roll's generation, and once it is ready installs it (see
// replaceBack). It returns the worker the new one replaced.
func (r *rollState) replaceBackSlot(i int) (old *worker, err error) {
	p, gen, to := r.p, r.spec.Generation, r.o.RollBackTo
	p.mu.Lock()
	w := p.slots[i].cur
	due := i < p.size && w != nil && w.gen == gen && !w.retiring
	p.mu.Unlock()
	if !due {
		return nil, errSlotTaken
	}
	err = p.launchReady(r.ctx, i, to, func(s *slot, nw *worker) error {
		if p.closing {
			return ErrClosing
		}
		if c := s.cur; c != nil && c.gen != gen && (c.ready || c.retiring) {
			// A restart refilled it meanwhile, and serves.
			return errSlotTaken
		}
		// A restart that is not ready yet gives way to nw, which is:
		// the slot is not left without a ready worker meanwhile.
		old, _ = p.installLocked(s, nw, to)
		return nil
	})
	return old, err
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
