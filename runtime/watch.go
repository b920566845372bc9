//go:build linux

package runtime

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"go.uber.org/zap"

	"github.com/handoff-dev/handoff/reload"
)

// opWatch names the deploys a watched change asks for.
const opWatch = "deploy on change"

// watchExcludes are never watched inside a --watch-path directory.
var watchExcludes = []string{".git", ".hg", ".svn"}

// newWatcher sets up the watch of Config.Watch and Config.WatchPaths, or
// returns nil when there is none. path is the worker command as resolved
// now. It fails, with nothing left watching, if a watch path does not
// exist.
func (p *primary) newWatcher(path string) (*reload.Watcher, error) {
	if !p.cfg.Watch {
		return nil, nil
	}
	// Watched as found in PATH, not as resolved: when that is a symlink
	// (current -> releases/42/server), the watch follows it to each
	// release it is switched to.
	exe := path
	if found, err := exec.LookPath(p.cfg.Command[0]); err == nil {
		if abs, err := filepath.Abs(found); err == nil {
			exe = abs
		}
	}
	cfg := reload.Config{Executables: []string{exe}, Exclude: watchExcludes, Quiet: p.cfg.WatchQuiet, Logger: p.log}
	files, trees, err := reload.SplitPaths(p.cfg.WatchPaths)
	if err != nil {
		return nil, fmt.Errorf("--watch-path %v; give an existing file or directory", err)
	}
	cfg.Files = append(cfg.Files, files...)
	cfg.Trees = trees
	w, err := reload.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("--watch: %v", err)
	}
	return w, nil
}

// runWatcher turns every change w reports into a deploy request, until the
// returned stop is called; stop returns once the watch has ended.
func (p *primary) runWatcher(w *reload.Watcher, path string) (stop func()) {
	if w == nil {
		return func() {}
	}
	watched := append([]string{path}, p.cfg.WatchPaths...)
	p.log.Info("watching", zap.String("paths", strings.Join(watched, ", ")))
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		w.Run(ctx, func(c reload.Change) {
			p.log.Info("change detected", zap.String("paths", c.String()))
			r, _ := deployRequest()
			r.op = opWatch
			select {
			case p.reqs <- r:
			case <-ctx.Done():
			}
		})
	}()
	return func() {
		cancel()
		wg.Wait()
	}
}
