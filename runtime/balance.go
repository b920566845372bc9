//go:build linux

package runtime

import (
	"encoding/json"
	"fmt"
	"os"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

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

// The tableflip keys of a steered listener: its members, and a memfd
// with the group's state (groupHandOver) for the new primary.
func groupFileKey(key string, i int) string { return fmt.Sprintf("handoff-steer %s #%d", key, i) }
func groupStateKey(key string) string       { return "handoff-steer-state " + key }

// groupHandOver is what a new primary reads of a group it takes over.
type groupHandOver struct {
	Files int             `json:"files"`
	State json.RawMessage `json:"state"`
	// Slots are, by slot, the id of the member its worker accepts from
	// (-1: none).
	Slots []int `json:"slots"`
}

// bindGroup makes listener l a steered group in mode, with one member
// (the first worker's), or takes over the previous primary's group (then
// the member is nil, and imported says which members its slots' workers
// accept from). ok false: the previous primary passed l as one shared
// socket, which stays so.
func (p *primary) bindGroup(l Listener, key string, mode steer.Mode) (g *steer.Group, first *steer.Member, slots []int, ok bool, err error) {
	if p.upg.HasParent() {
		f, err := p.upg.Fds.File(groupStateKey(key))
		if err != nil || f == nil {
			return nil, nil, nil, false, err
		}
		g, slots, err := importGroup(p.upg.Fds.File, key, f)
		f.Close()
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

// importGroup reads a group's hand-over from its state file f and its
// member files.
func importGroup(file func(string) (*os.File, error), key string, f *os.File) (*steer.Group, []int, error) {
	var h groupHandOver
	if err := json.NewDecoder(f).Decode(&h); err != nil {
		return nil, nil, fmt.Errorf("the previous primary's group state: %v", err)
	}
	files := make([]*os.File, 0, h.Files)
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for i := range h.Files {
		mf, err := file(groupFileKey(key, i))
		if err != nil || mf == nil {
			return nil, nil, fmt.Errorf("the previous primary's socket %d of %d is missing", i+1, h.Files)
		}
		files = append(files, mf)
	}
	g, err := steer.Import(files, h.State)
	return g, h.Slots, err
}

// exportGroups hands every group to tableflip for a new primary, with
// which member each slot's worker accepts from; from then on this
// primary changes none of them (thaw undoes that if the upgrade fails).
func (p *primary) exportGroups() error {
	l := p.sockets
	if l == nil {
		return nil
	}
	slots := p.pool.SlotSockets()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.frozen = true
	for i, g := range l.groups {
		if g == nil {
			continue
		}
		files, state, err := g.Export()
		if err != nil {
			return fmt.Errorf("listener %s: %v", g.Addr(), err)
		}
		h := groupHandOver{Files: len(files), State: state, Slots: make([]int, len(slots))}
		for s, ss := range slots {
			h.Slots[s] = -1
			if ms, ok := ss.(*memberSet); ok && ms.members[i] != nil {
				h.Slots[s] = ms.members[i].ID()
			}
		}
		key := l.keys[i]
		for j, f := range files {
			if err := p.upg.Fds.AddFile(groupFileKey(key, j), f); err != nil {
				return err
			}
		}
		b, _ := json.Marshal(h)
		if err := addMemfd(p.upg.Fds.AddFile, groupStateKey(key), b); err != nil {
			return err
		}
	}
	return nil
}

// addMemfd hands b to tableflip under key, as a sealed memfd.
func addMemfd(add func(string, *os.File) error, key string, b []byte) error {
	fd, err := unix.MemfdCreate("handoff-steer-state", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return os.NewSyscallError("memfd_create", err)
	}
	f := os.NewFile(uintptr(fd), key)
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		return err
	}
	if _, err := f.Seek(0, 0); err != nil {
		return err
	}
	return add(key, f)
}

// thaw lets this primary steer its groups again: the upgrade that
// exported them failed, and the new primary is gone.
func (l *socketLayer) thaw() {
	if l == nil {
		return
	}
	l.mu.Lock()
	l.frozen = false
	for i := range l.serving {
		l.serving[i] = nil // attach this primary's program again
	}
	l.mu.Unlock()
}

// logBalance says, once at start, how connections are spread, and why.
func (p *primary) logBalance(mode steer.Mode, why string) {
	p.log.Info("balancing", zap.String("mode", mode.String()), zap.String("reason", why))
}
