//go:build linux

package runtime

import (
	"os"
	"time"

	"github.com/handoff-dev/handoff/internal/sockets"
	"github.com/handoff-dev/handoff/internal/steer"
	"github.com/handoff-dev/handoff/workerpool"
)

// status is a snapshot of the primary for the control socket.
func (p *primary) status() Status {
	now := time.Now()
	st := Status{Primary: PrimaryStatus{Pid: os.Getpid(), Listeners: p.addrs, Command: p.cfg.Command}}
	p.book.snapshot(&st, now)
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
