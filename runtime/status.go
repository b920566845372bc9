//go:build linux

package runtime

import (
	"os"
	"sync"
	"time"

	"github.com/handoff-dev/handoff/internal/sockets"
	"github.com/handoff-dev/handoff/internal/steer"
	"github.com/handoff-dev/handoff/workerpool"
)

// statusBook is what status reports of the primary that changes while
// it runs: the generation serving and the deploy in progress. Any
// goroutine may read it; the deploying one writes it.
type statusBook struct {
	mu        sync.Mutex
	started   time.Time
	serving   int            // generation of the last start or deploy that finished
	deploying *UpgradeStatus // the deploy in progress, if any
}

// setServing records the generation now serving.
func (b *statusBook) setServing(gen int) {
	b.mu.Lock()
	b.serving = gen
	b.mu.Unlock()
}

// servingGen is the generation serving.
func (b *statusBook) servingGen() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.serving
}

// setDeploying records the deploy in progress (nil: none).
func (b *statusBook) setDeploying(u *UpgradeStatus) {
	b.mu.Lock()
	b.deploying = u
	b.mu.Unlock()
}

// updateDeploy changes the deploy in progress, if any.
func (b *statusBook) updateDeploy(change func(*UpgradeStatus)) {
	b.mu.Lock()
	if b.deploying != nil {
		change(b.deploying)
	}
	b.mu.Unlock()
}

// deployStep records the step of the deploy in progress.
func (b *statusBook) deployStep(step, steps int) {
	b.updateDeploy(func(u *UpgradeStatus) { u.Step, u.Steps = step, steps })
}

// snapshot fills st's primary and upgrade as of now.
func (b *statusBook) snapshot(st *Status, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	st.Primary.Generation, st.Primary.Started = b.serving, b.started
	st.Primary.UptimeSeconds = now.Sub(b.started).Seconds()
	if u := b.deploying; u != nil {
		cp := *u
		cp.ElapsedSeconds = now.Sub(u.Started).Seconds()
		st.Upgrade = &cp
	}
}

// status is a snapshot of the primary for the control socket.
func (p *primary) status() Status {
	now := time.Now()
	st := Status{Primary: PrimaryStatus{Pid: os.Getpid(), Listeners: p.addrs, Command: p.cfg.Command}}
	p.book.snapshot(&st, now)
	st.Generations = p.gens.status()
	if p.ctl != nil {
		st.Primary.Control = p.ctl.path
	}
	st.Primary.Workers = p.pool.Size()
	st.Workers = []WorkerStatus{}
	for _, w := range p.pool.Workers() {
		rss, _ := workerpool.RSS(w.Pid)
		ws := WorkerStatus{Slot: w.Slot, Pid: w.Pid, Generation: w.Generation, State: w.State(),
			Started: w.Started, UptimeSeconds: now.Sub(w.Started).Seconds(), Restarts: w.Restarts, RSSBytes: rss}
		if s, ok := w.Socks.(*sockets.Set); ok {
			queue, given := s.Queue()
			ws.Queue = &queue
			if p.balance.mode == steer.RoundRobin {
				ws.Given = &given
			}
		}
		ws.Probe = p.probes.get(w.Pid)
		st.Workers = append(st.Workers, ws)
	}
	st.Balance, st.BalanceReason = p.balance.mode.String(), p.balance.why
	return st
}
