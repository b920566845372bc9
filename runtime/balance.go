//go:build linux

package runtime

import (
	"fmt"

	"go.uber.org/zap"

	"github.com/handoff-dev/handoff/internal/sockets"
	"github.com/handoff-dev/handoff/internal/steer"
)

// balanceMode resolves Config.Balance for a first primary: the mode of
// its TCP listeners' groups, and why, in words.
func (p *primary) balanceMode() (steer.Mode, string, error) {
	tcp := false
	for _, l := range p.cfg.Listeners {
		tcp = tcp || l.Network == "tcp"
	}
	if !tcp {
		return steer.Shared, "every listener is a unix socket, which all workers share", nil
	}
	switch p.cfg.Balance {
	case "shared":
		return steer.Shared, "--balance shared: one socket all workers accept from", nil
	case "", "auto":
		mode, why := detectBalance()
		return mode, why, nil
	}
	want, err := steer.ParseMode(p.cfg.Balance)
	if err != nil {
		return 0, "", fmt.Errorf("--balance: %v", err)
	}
	best, why := detectBalance()
	switch {
	case want == steer.RoundRobin && best != steer.RoundRobin:
		return 0, "", fmt.Errorf("--balance round-robin cannot work here: %s; use --balance random (no privilege needed), or give handoff CAP_BPF", why)
	case want == steer.Random && best == steer.Shared:
		return 0, "", fmt.Errorf("--balance random cannot work here: %s; use --balance shared", why)
	}
	return want, "--balance " + want.String(), nil
}

// detectBalance is steer.Detect; tests put a lesser kernel in its place.
var detectBalance = steer.Detect

// bindGroup makes listener l a steered group in mode, with one member
// (the first worker's), or takes over the previous primary's group (then
// the member is nil, and slots says which members its slots' workers
// accept from). ok false: the previous primary passed l as one shared
// socket, which stays so.
func (p *primary) bindGroup(l Listener, key string, mode steer.Mode) (g *steer.Group, first *steer.Member, slots []int, ok bool, err error) {
	if p.upg.HasParent() {
		g, slots, found, err := sockets.ImportGroup(p.upg.Fds.File, key)
		if !found {
			return nil, nil, nil, false, err
		}
		if err != nil {
			return nil, nil, nil, false, fmt.Errorf("listen %s: %v", l.Address, err)
		}
		return g, nil, slots, true, nil
	}
	g, err = steer.New(l.Address, mode)
	if err == nil {
		if first, err = g.Add(); err != nil {
			g.CloseAll()
		}
	}
	if err != nil {
		return nil, nil, nil, false, listenError(l, err)
	}
	return g, first, nil, true, nil
}

// logBalance says, once at start, how connections are spread, and why.
func (p *primary) logBalance(mode steer.Mode, why string) {
	p.log.Info("balancing", zap.String("mode", mode.String()), zap.String("reason", why))
}
