//go:build linux

package runtime

import (
	"fmt"
	"net"
	"strings"
	"syscall"

	"go.uber.org/zap"

	"github.com/handoff-dev/handoff/internal/adopt"
	"github.com/handoff-dev/handoff/workerpool"
)

// probeAdoption says why binds cannot be adopted here (nil: they can), for
// workers that run as o says: the probe's target is a process started as
// they are. Tests put a refusal in its place.
var probeAdoption = adopt.ProbeWorker

// setUpBinds prepares the workers to bind their port as they would alone:
// PORT in their environment (the first TCP listener's port, unless the
// primary's environment has PORT), and bind adoption as cfg.AdoptBind
// asks. fds are the raw listener fds, which must outlive the returned
// Supervisor (nil when adoption is off; Close is nil-safe); cred is the
// workers' user (nil: the primary's).
func (p *primary) setUpBinds(fds []int, cred *syscall.Credential) (*adopt.Supervisor, error) {
	p.env = withPort(p.env, p.cfg.Listeners, p.addrs)
	p.binds.addrs = p.addrs
	mode := p.cfg.AdoptBind
	// What cannot work without adoption makes its absence an error.
	need := ""
	switch {
	case mode == AdoptOn:
		need = "--adopt-bind on"
	case p.cfg.Ready == ReadyBind:
		need = "--ready bind"
	}
	if mode == AdoptOff {
		p.binds.off = "--adopt-bind off"
		if need != "" {
			return nil, fmt.Errorf("%s needs bind adoption, which --adopt-bind off turns off: use --adopt-bind auto, or --ready delay:DURATION", need)
		}
		return nil, nil
	}
	s, err := p.startAdoption(fds, cred)
	if err == nil {
		p.binds.on = true
		p.log.Debug("bind adoption on")
		return s, nil
	}
	if need != "" {
		return nil, fmt.Errorf("%s: bind adoption cannot work here: %v; use --adopt-bind off and have the workers take their sockets from fd 3 (LISTEN_FDS)", need, err)
	}
	p.binds.off = err.Error()
	p.log.Info("bind adoption off", zap.String("reason", err.Error()))
	return nil, nil
}

// startAdoption probes, as the workers will run, and makes the
// Supervisor.
func (p *primary) startAdoption(fds []int, cred *syscall.Credential) (*adopt.Supervisor, error) {
	if err := probeAdoption(adopt.ProbeOptions{Credential: cred, Env: p.env}); err != nil {
		return nil, err
	}
	ls := make([]adopt.Listener, len(fds))
	for i, fd := range fds {
		l := p.cfg.Listeners[i]
		// Shared: not a steered group, so one socket every worker accepts
		// from (a unix listener, or every listener in shared mode).
		shared := p.sockets.Shared(i)
		ls[i] = adopt.Listener{Name: l.Name, Network: l.Network, Addr: p.addrs[i], FD: fd, Shared: shared}
	}
	return adopt.NewSupervisor(ls, p.log)
}

// adoptFD is the launcher's PrepareFD for s: each worker's channel to the
// Supervisor, whose binds get the worker's own listeners. Nil when s is.
func (p *primary) adoptFD(s *adopt.Supervisor) func(slot, generation int, listeners []int) (*workerpool.ExtraFD, error) {
	if s == nil {
		return nil
	}
	return func(slot, generation int, listeners []int) (*workerpool.ExtraFD, error) {
		pend, err := s.PrepareWith(slot, listeners)
		if err != nil {
			return nil, err
		}
		log := p.log.With(zap.Int("slot", slot), zap.Int("generation", generation))
		return &workerpool.ExtraFD{FD: pend.FD, Env: pend.Env, Started: func(pid int, ready func()) {
			if p.cfg.Ready != ReadyBind {
				ready = nil
			}
			pend.Started(pid, log.With(zap.Int("pid", pid)), ready)
		}}, nil
	}
}

// withPort adds PORT, the port of the first TCP listener (as bound: a
// port 0 shows the real one), to the workers' environment, as Heroku,
// Cloud Run and most frameworks name the port to listen on, unless env
// has PORT already.
func withPort(env []string, ls []Listener, addrs []string) []string {
	for _, kv := range env {
		if strings.HasPrefix(kv, "PORT=") {
			return env
		}
	}
	for i, l := range ls {
		if l.Network != "tcp" || i >= len(addrs) {
			continue
		}
		if _, port, err := net.SplitHostPort(addrs[i]); err == nil {
			return append(env[:len(env):len(env)], "PORT="+port)
		}
		break
	}
	return env
}
