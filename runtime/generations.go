//go:build linux

package runtime

import (
	"context"
	"errors"
	"maps"
	"os"
	"slices"
	"sync"

	"github.com/handoff-dev/handoff/internal/pin"
	"github.com/handoff-dev/handoff/workerpool"
)

// The generations the primary keeps (the one serving and the one before,
// for a rollback), what status says of them, and the pinned files they
// run: parts the primary holds, each under its own lock where more than
// the loop's goroutine uses it. What a job does with them is keep.go's.

// generation is one generation the primary keeps: its number and what its
// workers run, the pinned file included (spec.Pin).
type generation struct {
	gen  int
	spec *workerpool.Spec
	// rollbackOf is the generation whose file a rollback deployed again
	// as this one; 0 otherwise.
	rollbackOf int
}

// pin is the file g pinned, or nil.
func (g *generation) pin() *pin.File {
	f, _ := g.spec.Pin.(*pin.File)
	return f
}

// pinOrNil is g's pin, or nil when g is nil too.
func (g *generation) pinOrNil() *pin.File {
	if g == nil {
		return nil
	}
	return g.pin()
}

// status describes g for status (nil: none).
func (g *generation) status() *GenerationStatus {
	if g == nil {
		return nil
	}
	var st *GenerationStatus
	if f := g.pin(); f != nil {
		st = generationStatus(g.gen, f.Identity())
		describePin(st, f)
	} else {
		st = &GenerationStatus{Generation: g.gen, Path: g.spec.Path}
	}
	st.RollbackOf = g.rollbackOf
	return st
}

// sameBuild reports whether a and b run the same file: the same path with
// the same content (or, for a file the primary may not read, the same
// inode, size and modification time). The path counts: the launcher
// script of each release directory is often the same text, but each runs
// the code next to it.
func sameBuild(a, b *generation) bool {
	if a == nil || b == nil || a.pin() == nil || b.pin() == nil || a.spec.Path != b.spec.Path {
		return false
	}
	return a.pin().Same(b.pin())
}

// pinHold is the set of pinned files the primary holds open: those its
// generations and slots run, and those a job has just made.
type pinHold struct {
	mu    sync.Mutex
	files map[*pin.File]struct{}
}

// known lists the pins held.
func (h *pinHold) known() []*pin.File {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Collect(maps.Keys(h.files))
}

// keep holds f.
func (h *pinHold) keep(f *pin.File) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.files == nil {
		h.files = map[*pin.File]struct{}{}
	}
	h.files[f] = struct{}{}
}

// closeUnused closes the pins held that used does not name.
func (h *pinHold) closeUnused(used map[*pin.File]bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for f := range h.files {
		if !used[f] {
			f.Close()
			delete(h.files, f)
		}
	}
}

// closeAll closes every pin held, as Run returns.
func (h *pinHold) closeAll() { h.closeUnused(nil) }

// generations is what status and `handoff rollback` know of the
// generations the primary keeps: the current one (what the last start or
// deploy that finished runs) and the previous one (what a rollback
// deploys again). Its methods are safe for concurrent use; the zero value
// keeps nothing. The primary's loop publishes its generation records here
// after every job (publishGenerations) and installs the rollback job
// (setRollback); without both, a rollback is refused with errNoPrevious.
type generations struct {
	mu       sync.Mutex
	current  *GenerationStatus
	previous *GenerationStatus
	// rollback deploys the previous generation again, as a job of the
	// primary's loop; nil while there is nothing to roll back to.
	rollback func(context.Context) error
	// The pins of current and previous, whose #! script status checks
	// at its path each time (ScriptChanged).
	curPin, prevPin *pin.File
}

// setPins records the pins of the current and previous generations.
func (g *generations) setPins(current, previous *pin.File) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.curPin, g.prevPin = current, previous
}

// set records (copies of) the current and previous generations (nil:
// none).
func (g *generations) set(current, previous *GenerationStatus) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.current, g.previous = clone(current), clone(previous)
}

func clone(g *GenerationStatus) *GenerationStatus {
	if g == nil {
		return nil
	}
	c := *g
	return &c
}

// setRollback installs the job that deploys the previous generation again
// (nil: none).
func (g *generations) setRollback(run func(context.Context) error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.rollback = run
}

// status is what `handoff status` shows: the records, and whether a #!
// script changed at its path since its deploy.
func (g *generations) status() GenerationsStatus {
	g.mu.Lock()
	st := GenerationsStatus{Current: clone(g.current), Previous: clone(g.previous)}
	cur, prev := g.curPin, g.prevPin
	g.mu.Unlock()
	scriptChanged(st.Current, cur)
	scriptChanged(st.Previous, prev)
	return st
}

// scriptChanged sets st.ScriptChanged when f is a #! script whose path
// no longer holds the deployed script.
func scriptChanged(st *GenerationStatus, f *pin.File) {
	if st == nil || f == nil {
		return
	}
	note, err := f.ScriptChanged()
	if err != nil && !errors.Is(err, pin.ErrClosed) {
		note = err.Error()
	}
	st.ScriptChanged = note
}

// generationStatus describes generation gen running the pinned file id.
func generationStatus(gen int, id pin.Identity) *GenerationStatus {
	return &GenerationStatus{Generation: gen, Path: id.Path, Size: id.Size, ModTime: id.ModTime, SHA256: id.SHA256}
}

// describePin adds to st what f pins: in words, and a script's pinned
// interpreter.
func describePin(st *GenerationStatus, f *pin.File) {
	st.Pinned = f.Describe()
	if f.Script() {
		st.Script = true
		if id, ok := f.Interpreter(); ok {
			st.Interpreter = &PinnedFile{Path: id.Path, Size: id.Size, SHA256: id.SHA256}
		}
	}
}

// exportOnce is the pin.Store through which a primary exports its
// generations: it gives tableflip a file only if tableflip does not hold
// that very file under that key already. tableflip duplicates every file
// it is given and, given another under the same key, drops its earlier
// duplicate without closing it (the garbage collector does, some time
// later): re-exporting the same generations on every self-upgrade that
// failed would pile up descriptors, and memfd copies of whole executables.
type exportOnce struct {
	fds  pin.Store
	held map[string]*os.File // key → the file tableflip holds a duplicate of
}

func (s *exportOnce) AddFile(key string, f *os.File) error {
	if s.held[key] == f {
		return nil
	}
	if err := s.fds.AddFile(key, f); err != nil {
		return err
	}
	// The pin stays referenced here, so no later file can take its
	// address while tableflip holds its duplicate.
	s.held[key] = f
	return nil
}

func (s *exportOnce) File(key string) (*os.File, error) { return s.fds.File(key) }
