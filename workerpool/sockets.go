package workerpool

import (
	"context"
	"time"

	"go.uber.org/zap"
)

// Sockets is a socket layer that gives each worker listening sockets of
// its own and steers new connections among them (the primary's, over
// internal/steer). With it the pool decides who gets new connections:
//
//   - a worker launched for a roll, a Replace or a growing Scale gets new
//     sockets (New), steered to once it is ready and holds its slot;
//   - a restarted worker gets its slot's sockets back, with what queued on
//     them while the slot had no worker;
//   - the sockets of a worker that is not ready, not its slot's, draining
//     or dead take no new connection (Serve names only the others);
//   - a worker is told to stop only once its sockets were steered away and
//     their queues drained (Drain, bounded), and its sockets are closed
//     once no worker uses them and no slot keeps them (Close).
//
// Its methods are called with the pool's lock held, and must not call the
// pool.
type Sockets interface {
	// New makes the sockets of a new worker of slot. They take no new
	// connection until a Serve names them.
	New(slot int) (Socks, error)
	// Serve steers every new connection to the sockets named. An empty
	// list leaves the steering as it is: what arrives then queues for
	// the worker that will serve it.
	Serve(serving []Socks)
	// Close closes s: no worker uses it any more.
	Close(s Socks)
}

// Socks are one worker's listening sockets.
type Socks interface {
	// FDs are their raw fds, in the order of the listeners: the worker's
	// fds 3, 4, …
	FDs() []int
	// Drain waits, polling, until the sockets have been steered away and
	// their accept queues are empty, or ctx ends.
	Drain(ctx context.Context) error
}

// sockRef counts the users of a worker's sockets: each worker launched
// with them, and the slot that keeps them for its next worker.
type sockRef struct {
	s    Socks
	refs int
	// foreign: another primary's worker accepts from them (AdoptSockets).
	foreign bool
}

// drainBound bounds how long a retiring worker's sockets may take to be
// drained before it is told to stop anyway.
const drainBound = 3 * time.Second

// newSocksLocked returns the sockets for a worker launched for slot i
// in state hold: the slot's own for a restart (slotServing), new ones
// otherwise; nil without a socket layer.
func (p *Pool) newSocksLocked(i int, hold slotState) (*sockRef, error) {
	if p.cfg.Sockets == nil {
		return nil, nil
	}
	// A restart takes its slot's sockets back; so does a roll-back of
	// a slot handed to another primary, whose sockets it steers now.
	if s := p.slots[i]; s.socks != nil && !s.socks.foreign && (hold == slotServing || s.state == slotRemote) {
		return s.socks, nil
	}
	ss, err := p.cfg.Sockets.New(i)
	if err != nil {
		return nil, err
	}
	return &sockRef{s: ss}, nil
}

// useSocksLocked counts one more user of r.
func useSocksLocked(r *sockRef) {
	if r != nil {
		r.refs++
	}
}

// releaseSocksLocked counts one user of r less, and closes its sockets
// once nothing uses them.
func (p *Pool) releaseSocksLocked(r *sockRef) {
	if r == nil {
		return
	}
	r.refs--
	if r.refs <= 0 {
		p.cfg.Sockets.Close(r.s)
	}
}

// keepSocksLocked makes r the sockets slot s keeps for its workers,
// releasing those it kept before.
func (p *Pool) keepSocksLocked(s *slot, r *sockRef) {
	if s.socks == r {
		return
	}
	old := s.socks
	s.socks = r
	useSocksLocked(r)
	p.releaseSocksLocked(old)
}

// steerLocked steers new connections to the sockets of every slot's
// worker that is ready and not draining, and of every slot held by
// another primary whose sockets are known (AdoptSockets).
func (p *Pool) steerLocked() {
	if p.cfg.Sockets == nil {
		return
	}
	var set []Socks
	for _, s := range p.slots[:p.size] {
		switch {
		case s.cur != nil && s.cur.ready && !s.cur.retiring && s.cur.socks != nil:
			set = append(set, s.cur.socks.s)
		case s.state == slotRemote && s.socks != nil && s.socks.foreign:
			set = append(set, s.socks.s)
		}
	}
	p.cfg.Sockets.Serve(set)
}

// drainSocks waits (bounded) until w's sockets have been steered away
// and drained, before w is told to stop: no connection then reaches a
// worker that is stopping. Nothing to wait for without a socket layer,
// when shutting down (every socket is closed after), or once w has
// exited.
func (p *Pool) drainSocks(w *worker) {
	p.mu.Lock()
	r, closing := w.socks, p.closing
	p.mu.Unlock()
	if r == nil || closing {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), drainBound)
	defer cancel()
	go func() {
		select {
		case <-w.proc.Done():
		case <-p.shut:
		case <-ctx.Done():
		}
		cancel()
	}()
	begin := time.Now()
	if err := r.s.Drain(ctx); err != nil && ctx.Err() != nil && !exited(w) {
		w.log.Warn("worker socket not drained", zap.Duration("waited", time.Since(begin)), zap.String("reason", err.Error()))
	}
}

func exited(w *worker) bool {
	select {
	case <-w.proc.Done():
		return true
	default:
		return false
	}
}

// AdoptSockets gives the slot i, held by another primary (Adopt), the
// sockets its worker accepts from: they are steered to until a worker of
// this pool replaces it, then drained before that primary is asked to
// retire it, and closed once it is replaced.
func (p *Pool) AdoptSockets(i int, s Socks) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if i < 0 || i >= len(p.slots) || p.slots[i].state != slotRemote {
		return
	}
	r := &sockRef{s: s, foreign: true}
	p.slots[i].adopted = r
	p.keepSocksLocked(p.slots[i], r)
	p.steerLocked()
}

// installLocked installs w, ready, as slot s's worker running spec (see
// slot.install); s keeps w's sockets from now on.
func (p *Pool) installLocked(s *slot, w *worker, spec *Spec) (old *worker, wasRemote bool) {
	old, wasRemote = s.install(w, spec)
	p.keepSocksLocked(s, w.socks)
	return old, wasRemote
}

// remoteSocksLocked returns the sockets of slot s if another primary's
// worker holds it, counted as used until retireRemote or drainRemote:
// they stay open while that worker drains.
func (p *Pool) remoteSocksLocked(s *slot) *sockRef {
	if s.state != slotRemote || s.socks == nil {
		return nil
	}
	useSocksLocked(s.socks)
	return s.socks
}

// retireRemote has the other primary retire its worker of slot i (the
// slot's new worker holds it already, and the steering left that worker's
// sockets r out when it was installed), then waits until r has drained.
func (p *Pool) retireRemote(ctx context.Context, i int, r *sockRef, remote RetireHook) error {
	err := remote(ctx, i)
	p.drainRemote(ctx, i, r)
	return err
}

// drainRemote waits (bounded) until r, the sockets of slot i's worker of
// another primary, which was steered away and asked to retire, has
// drained, then releases them. The other primary drains them too before
// it sends the stop signal (see sockets.Set.Drain); they are closed only
// once both have.
func (p *Pool) drainRemote(ctx context.Context, i int, r *sockRef) {
	if r == nil {
		return
	}
	dctx, cancel := context.WithTimeout(ctx, drainBound)
	if err := r.s.Drain(dctx); err != nil && ctx.Err() == nil && !p.isClosing() {
		p.log.Warn("slot socket not drained", zap.Int("slot", i), zap.String("reason", err.Error()))
	}
	cancel()
	p.mu.Lock()
	p.releaseSocksLocked(r)
	p.mu.Unlock()
}

// SlotSockets returns the sockets each slot's worker accepts from (nil
// for a slot without): what a new primary is given in a hand-over.
func (p *Pool) SlotSockets() []Socks {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]Socks, p.size)
	for i, s := range p.slots[:p.size] {
		if s.socks != nil {
			out[i] = s.socks.s
		}
	}
	return out
}

// Steer steers new connections again as the pool's state says (after the
// socket layer lost its steering: a hand-over that failed).
func (p *Pool) Steer() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.steerLocked()
}

// isClosing says whether Shutdown has begun.
func (p *Pool) isClosing() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closing
}
