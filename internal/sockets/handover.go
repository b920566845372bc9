//go:build linux

package sockets

import (
	"encoding/json"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/handoff-dev/handoff/internal/steer"
	"github.com/handoff-dev/handoff/workerpool"
)

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

// ImportGroup takes over the group a previous primary exported (Export)
// for the listener named key, through file (tableflip's Fds.File): the
// group, and by slot the id of the member that slot's worker accepts
// from (for AddImported). found is false if there is no such group (that
// primary passed the listener as one shared socket) or its state could
// not be had (err says why); an error with found true is the group's own.
func ImportGroup(file func(string) (*os.File, error), key string) (g *steer.Group, slots []int, found bool, err error) {
	f, err := file(groupStateKey(key))
	if err != nil || f == nil {
		return nil, nil, false, err
	}
	defer f.Close()
	g, slots, err = importGroup(file, key, f)
	return g, slots, true, err
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

// Export hands every group to add (tableflip's Fds.AddFile) for a new
// primary, with which member each slot's worker accepts from (slots: the
// pool's SlotSockets); from then on this layer changes none of them
// (Thaw undoes that if the upgrade fails). Without a layer there is
// nothing to hand over.
func (l *Layer) Export(add func(string, *os.File) error, slots []workerpool.Socks) error {
	if l == nil {
		return nil
	}
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
			if ms, ok := ss.(*Set); ok && ms.members[i] != nil {
				h.Slots[s] = ms.members[i].ID()
			}
		}
		key := l.keys[i]
		for j, f := range files {
			if err := add(groupFileKey(key, j), f); err != nil {
				return err
			}
		}
		b, _ := json.Marshal(h)
		if err := addMemfd(add, groupStateKey(key), b); err != nil {
			return err
		}
	}
	return nil
}

// addMemfd hands b to add under key, as a sealed memfd.
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

// Thaw lets this layer steer its groups again: the upgrade that
// exported them failed, and the new primary is gone.
func (l *Layer) Thaw() {
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
