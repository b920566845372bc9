//go:build linux

package runtime

import (
	"os"
	"time"

	"github.com/handoff-dev/handoff/internal/steer"
	"github.com/handoff-dev/handoff/workerpool"
)

// setServingGen records the generation now serving, for status.
func (p *primary) setServingGen(gen int) {
	p.stmu.Lock()
	p.servingGen = gen
	p.stmu.Unlock()
}

// status is a snapshot of the primary for the control socket.
func (p *primary) status() Status {
	now := time.Now()
	p.stmu.Lock()
	st := Status{Primary: PrimaryStatus{Pid: os.Getpid(), Generation: p.servingGen, Started: p.started,
		UptimeSeconds: now.Sub(p.started).Seconds(), Listeners: p.addrs, Command: p.cfg.Command}}
	if u := p.deploying; u != nil {
		cp := *u
		cp.ElapsedSeconds = now.Sub(u.Started).Seconds()
		st.Upgrade = &cp
	}
	p.stmu.Unlock()
	st.Generations = p.gens.status()
	if p.ctl != nil {
		st.Primary.Control = p.ctl.Path()
	}
	st.Primary.Workers = p.pool.Size()
	st.Workers = []WorkerStatus{}
	for _, w := range p.pool.Workers() {
		rss, _ := workerpool.RSS(w.Pid)
		ws := WorkerStatus{Slot: w.Slot, Pid: w.Pid, Generation: w.Generation, State: w.State(),
			Started: w.Started, UptimeSeconds: now.Sub(w.Started).Seconds(), Restarts: w.Restarts, RSSBytes: rss}
		if s, ok := w.Socks.(*memberSet); ok {
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

func (p *primary) serving() int {
	p.stmu.Lock()
	defer p.stmu.Unlock()
	return p.servingGen
}

// setDeploying records the deploy in progress (nil: none) for status.
func (p *primary) setDeploying(u *UpgradeStatus) {
	p.stmu.Lock()
	p.deploying = u
	p.stmu.Unlock()
}

// deployStep records the step of the deploy in progress.
func (p *primary) deployStep(step, steps int) {
	p.stmu.Lock()
	if p.deploying != nil {
		p.deploying.Step, p.deploying.Steps = step, steps
	}
	p.stmu.Unlock()
}
