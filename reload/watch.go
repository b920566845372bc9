package reload

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"go.uber.org/zap"
)

// DefaultQuiet is the debounce of a Watcher: a change is reported once no
// further event has come for this long.
const DefaultQuiet = 50 * time.Millisecond

// maxPoll bounds the re-checks of an executable that is not complete yet;
// the events that complete it (a write, a chmod, a rename) re-check at once.
const maxPoll = time.Second

// Config says what a Watcher watches.
type Config struct {
	// Executables are watched through their directories, by name, so that
	// a file replaced by rename, removed and written anew, or chmodded is
	// seen. A change is reported only once every executable is Complete:
	// one deleted and not replaced yet, or half-written, is waited for.
	Executables []string
	// Files are watched like Executables, without the completeness check.
	Files []string
	// Trees are directories watched recursively, subdirectories created
	// later included. Within them, a file counts if it matches Include
	// (every file when Include is empty) and nothing on its path matches
	// Exclude.
	Trees []string
	// Include and Exclude are filepath.Match globs, tried against a file's
	// base name, its path relative to its tree (with /) and its absolute
	// path. An excluded directory is not descended into.
	Include, Exclude []string
	// Quiet is the debounce; default DefaultQuiet.
	Quiet time.Duration
	// Logger receives debug events; nil means none.
	Logger *zap.Logger
}

// Change is one debounced burst of events.
type Change struct {
	// Paths are the changed paths, sorted, at most 20 of them; Lost says
	// how many more there were.
	Paths []string
	Lost  int
}

func (c Change) String() string {
	s := strings.Join(c.Paths, ", ")
	if c.Lost > 0 {
		s += fmt.Sprintf(" and %d more", c.Lost)
	}
	return s
}

// Watcher reports debounced changes of what its Config names.
type Watcher struct {
	cfg   Config
	log   *zap.Logger
	fw    *fsnotify.Watcher
	files map[string]bool // the watched files, absolute
	// targets maps each executable that is a symlink to the file it
	// resolves to now, watched too (for a rewrite in place); a symlink
	// switched to another release moves that watch along.
	targets map[string]string
	trees   map[string]string // every watched directory of a tree → its tree's root
	// sources are the directories of trees that have held a file that
	// counts: one of them removed or renamed away is a change, another
	// (a build's temporary directory) is not.
	sources map[string]bool
	close   sync.Once
}

// CheckGlob reports whether pattern is a valid filepath.Match glob.
func CheckGlob(pattern string) error {
	if _, err := filepath.Match(pattern, ""); err != nil {
		return fmt.Errorf("glob %q does not parse: %v", pattern, err)
	}
	return nil
}

// New checks cfg and sets up the watches: every path must exist, every
// glob must parse. Run it, or Close it.
func New(cfg Config) (w *Watcher, err error) {
	if cfg.Quiet <= 0 {
		cfg.Quiet = DefaultQuiet
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	for _, g := range append(append([]string(nil), cfg.Include...), cfg.Exclude...) {
		if err := CheckGlob(g); err != nil {
			return nil, err
		}
	}
	fw, err := fsnotify.NewBufferedWatcher(256)
	if err != nil {
		return nil, fmt.Errorf("cannot watch files: %v", err)
	}
	cfg.Executables = append([]string(nil), cfg.Executables...)
	w = &Watcher{cfg: cfg, log: cfg.Logger, fw: fw, files: map[string]bool{}, targets: map[string]string{},
		trees: map[string]string{}, sources: map[string]bool{}}
	defer func() {
		if err != nil {
			fw.Close()
		}
	}()
	if err := w.watchFiles(); err != nil {
		return nil, err
	}
	w.retarget()
	if err := w.watchTrees(); err != nil {
		return nil, err
	}
	return w, nil
}

// watchFiles watches the directories of the Executables and Files, which
// must exist, and makes the Executables' paths absolute.
func (w *Watcher) watchFiles() error {
	for i, list := range [][]string{w.cfg.Executables, w.cfg.Files} {
		for j, f := range list {
			abs, err := filepath.Abs(f)
			if err != nil {
				return err
			}
			if i == 0 {
				w.cfg.Executables[j] = abs
			}
			if _, err := os.Stat(abs); err != nil {
				return fmt.Errorf("%s: %v", f, describe(err))
			}
			if err := w.fw.Add(filepath.Dir(abs)); err != nil {
				return fmt.Errorf("cannot watch %s: %v", filepath.Dir(abs), describe(err))
			}
			w.files[abs] = true
		}
	}
	return nil
}

// watchTrees watches the Trees, which must be directories, recursively.
func (w *Watcher) watchTrees() error {
	for _, t := range w.cfg.Trees {
		abs, err := filepath.Abs(t)
		if err != nil {
			return err
		}
		fi, err := os.Stat(abs)
		if err != nil {
			return fmt.Errorf("%s: %v", t, describe(err))
		}
		if !fi.IsDir() {
			return fmt.Errorf("%s: not a directory", t)
		}
		if _, err := w.addTree(abs, abs); err != nil {
			return err
		}
	}
	return nil
}

func describe(err error) string {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "no such file or directory"
	case errors.Is(err, fs.ErrPermission):
		return "permission denied"
	}
	return unwrapPath(err).Error()
}

// addTree watches dir and every directory below it that is not excluded,
// and returns the files found in them that count (for a directory created
// after the watch began, whose files may have come before its watch).
func (w *Watcher) addTree(root, dir string) (found []string, err error) {
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if path != dir && errors.Is(err, fs.ErrNotExist) {
				return nil // gone meanwhile
			}
			return fmt.Errorf("cannot watch %s: %v", path, describe(err))
		}
		if w.excluded(root, path) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.IsDir() {
			if w.included(root, path) {
				found = append(found, path)
				w.sources[filepath.Dir(path)] = true
			}
			return nil
		}
		if err := w.fw.Add(path); err != nil {
			if path != dir && errors.Is(err, fs.ErrNotExist) {
				return filepath.SkipDir
			}
			return fmt.Errorf("cannot watch %s: %v", path, describe(err))
		}
		w.trees[path] = root
		return nil
	})
	return found, err
}

func match(patterns []string, root, path string) bool {
	rel, _ := filepath.Rel(root, path)
	rel = filepath.ToSlash(rel)
	base := filepath.Base(path)
	for _, p := range patterns {
		if m, _ := filepath.Match(p, base); m {
			return true
		}
		if m, _ := filepath.Match(p, rel); m {
			return true
		}
		if m, _ := filepath.Match(p, path); m {
			return true
		}
	}
	return false
}

// excluded reports whether path, or a directory between root and it,
// matches an Exclude glob.
func (w *Watcher) excluded(root, path string) bool {
	if len(w.cfg.Exclude) == 0 {
		return false
	}
	for p := path; len(p) > len(root); p = filepath.Dir(p) {
		if match(w.cfg.Exclude, root, p) {
			return true
		}
	}
	return false
}

func (w *Watcher) included(root, path string) bool {
	return len(w.cfg.Include) == 0 || match(w.cfg.Include, root, path)
}

// Close stops the watches; Run does it when it returns.
func (w *Watcher) Close() error {
	var err error
	w.close.Do(func() { err = w.fw.Close() })
	return err
}

// Run reports every debounced change to changed, from Run's goroutine,
// until ctx ends; then it closes the watcher and returns. changed should
// not block for long: events wait meanwhile.
func (w *Watcher) Run(ctx context.Context, changed func(Change)) error {
	defer w.Close()
	d := &debounce{quiet: w.cfg.Quiet, pending: map[string]bool{}, timer: time.NewTimer(time.Hour), wait: w.cfg.Quiet}
	d.timer.Stop()
	for {
		select {
		case <-ctx.Done():
			d.timer.Stop()
			return nil
		case ev, ok := <-w.fw.Events:
			if !ok {
				return nil
			}
			for _, p := range w.relevant(ev) {
				d.note(p)
			}
		case err, ok := <-w.fw.Errors:
			if !ok {
				return nil
			}
			w.log.Warn("file watch error", zap.Error(err))
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				d.lost++
				d.timer.Reset(d.quiet)
			}
		case <-d.timer.C:
			if c, ok := w.settled(d); ok {
				changed(c)
			}
		}
	}
}

// debounce is Run's state: the changes not reported yet, and its timer.
type debounce struct {
	quiet   time.Duration
	pending map[string]bool // the changed paths, at most 20
	lost    int             // the changes past those
	timer   *time.Timer
	wait    time.Duration // the next re-check of an incomplete executable
	waiting string        // why the last check did not report, logged once
}

// note adds path to the pending changes, and waits for quiet again.
func (d *debounce) note(path string) {
	if !d.pending[path] && len(d.pending) >= 20 {
		d.lost++
	} else {
		d.pending[path] = true
	}
	d.wait = d.quiet
	d.timer.Reset(d.quiet)
}

// settled is called when d's timer fires. It returns the pending change
// and true once every executable is complete, and false when nothing is
// pending or an executable is not complete yet: it is then checked again
// after a wait that doubles up to maxPoll.
func (w *Watcher) settled(d *debounce) (Change, bool) {
	if len(d.pending) == 0 && d.lost == 0 {
		return Change{}, false
	}
	if err := w.executablesComplete(); err != nil {
		if msg := err.Error(); msg != d.waiting {
			w.log.Debug("waiting for the executable", zap.String("reason", msg))
			d.waiting = msg
		}
		d.timer.Reset(d.wait)
		d.wait = min(2*d.wait, maxPoll)
		return Change{}, false
	}
	d.waiting = ""
	w.retarget()
	c := Change{Lost: d.lost}
	for p := range d.pending {
		c.Paths = append(c.Paths, p)
	}
	sort.Strings(c.Paths)
	clear(d.pending)
	d.lost = 0
	w.log.Debug("change", zap.Strings("paths", c.Paths), zap.Int("more", c.Lost))
	return c, true
}

// retarget follows each executable that is a symlink to its file now,
// and watches that file instead of the one it led to before (which a
// deploy may delete with its release, and which is no change then).
func (w *Watcher) retarget() {
	for _, e := range w.cfg.Executables {
		target, err := filepath.EvalSymlinks(e)
		if err != nil {
			continue // missing for now: waited for
		}
		old, had := w.targets[e]
		if target == e || (had && target == old) {
			continue
		}
		if had && !w.given(old) {
			delete(w.files, old)
		}
		if err := w.fw.Add(filepath.Dir(target)); err != nil {
			w.log.Warn("cannot watch the executable's directory", zap.String("path", filepath.Dir(target)), zap.Error(err))
			continue
		}
		w.files[target] = true
		w.targets[e] = target
	}
}

// given reports whether path is one of the files the Config names.
func (w *Watcher) given(path string) bool {
	for _, list := range [][]string{w.cfg.Executables, w.cfg.Files} {
		for _, f := range list {
			if abs, _ := filepath.Abs(f); abs == path {
				return true
			}
		}
	}
	return false
}

func (w *Watcher) executablesComplete() error {
	for _, e := range w.cfg.Executables {
		if err := Complete(e, w.cfg.Quiet); err != nil {
			return err
		}
	}
	return nil
}

// relevant returns the paths an event changes that count, and watches a
// directory created inside a tree.
func (w *Watcher) relevant(ev fsnotify.Event) []string {
	path := filepath.Clean(ev.Name)
	if w.files[path] {
		return []string{path}
	}
	if root, ok := w.trees[path]; ok && ev.Has(fsnotify.Remove|fsnotify.Rename) {
		// A watched directory went away: its watches go with it, and it
		// is a change if it held sources.
		had := false
		for d := range w.trees {
			if d == path || strings.HasPrefix(d, path+string(filepath.Separator)) {
				had = had || w.sources[d]
				delete(w.trees, d)
				delete(w.sources, d)
			}
		}
		if path == root {
			w.log.Warn("a watched directory was removed", zap.String("path", path))
		}
		if had {
			return []string{path}
		}
		return nil
	}
	root, ok := w.trees[filepath.Dir(path)]
	if !ok || w.excluded(root, path) {
		return nil
	}
	if ev.Has(fsnotify.Create) {
		if fi, err := os.Lstat(path); err == nil && fi.IsDir() {
			found, err := w.addTree(root, path)
			if err != nil {
				w.log.Warn("cannot watch a new directory", zap.String("path", path), zap.Error(err))
			}
			return found
		}
	}
	if w.included(root, path) {
		w.sources[filepath.Dir(path)] = true
		return []string{path}
	}
	return nil
}

// SplitPaths sorts paths into Files and Trees: directories are trees. A
// path that does not exist is an error that names it.
func SplitPaths(paths []string) (files, trees []string, err error) {
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %s", p, describe(err))
		}
		if fi.IsDir() {
			trees = append(trees, p)
		} else {
			files = append(files, p)
		}
	}
	return files, trees, nil
}
