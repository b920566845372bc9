//go:build linux

package runtime

import (
	"sync"
	"time"

	"github.com/handoff-dev/handoff/internal/probe"
	"github.com/handoff-dev/handoff/internal/steer"
)

// What the primary knows and tells: the status book (the generation
// serving, the deploy in progress) and the probe book (each worker's last
// HTTP probe), which any goroutine reads, each under its own lock; how
// connections are spread (balanceInfo) and what it knows of bind
// adoption (bindState), both set once at start. Nothing here calls the
// primary.

// statusBook is what status reports of the primary that changes while
// it runs: the generation serving and the deploy in progress. Any
// goroutine may read it; the deploying one writes it, and during a
// self-upgrade so does the hand-over (the new primary's pid, its steps).
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

// probeBook keeps each live worker's last probe, by pid, for status and
// the metrics.
type probeBook struct {
	mu   sync.Mutex
	last map[int]ProbeStatus
}

func (b *probeBook) record(pid int, kind string, r probe.Result, failures int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.last == nil {
		b.last = map[int]ProbeStatus{}
	}
	b.last[pid] = ProbeStatus{Kind: kind, At: r.At, OK: r.OK(), Result: r.String(), TookSeconds: r.Took.Seconds(), Failures: failures}
}

func (b *probeBook) get(pid int) *ProbeStatus {
	b.mu.Lock()
	defer b.mu.Unlock()
	if s, ok := b.last[pid]; ok {
		return &s
	}
	return nil
}

// keep forgets the workers not in live.
func (b *probeBook) keep(live map[int]bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for pid := range b.last {
		if !live[pid] {
			delete(b.last, pid)
		}
	}
}

// balanceInfo is how connections are spread, and why: for the log,
// status and metrics.
type balanceInfo struct {
	mode steer.Mode
	why  string
}

// bindState is what the primary knows of bind adoption.
type bindState struct {
	// on: workers' binds are adopted; else off says why not.
	on  bool
	off string
	// addrs are the listeners' bound addresses, for advice.
	addrs []string
}
