package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/handoff-dev/handoff/reload"
	"github.com/handoff-dev/handoff/runtime"
)

const devUsage = `Usage: handoff dev [flags] --build 'CMD' -- COMMAND [ARG...]

The edit-build-serve loop: serves COMMAND as 'handoff run' does, watches the
source tree, runs the build command on every change and rolls the new build
out one worker at a time, so the port never goes dark between two builds.
A build that fails prints the compiler's output and the old version keeps
serving; a build that does not start or get ready is refused the same way.

Flags:
  --build CMD              the build command, run with sh -c in the current
                           directory (required); it must write COMMAND.
                           Runs at start when COMMAND does not exist yet
  --watch-path PATH        source directory (watched recursively, new
                           subdirectories included) or file to watch;
                           repeatable (default: the current directory)
  --include GLOB           files that count, matched against the base name
                           or the path relative to the watched directory;
                           repeatable, replaces the default
                           (default: *.go, go.mod, go.sum)
  --exclude GLOB           files and directories to ignore, repeatable, added
                           to the default (.git, vendor, node_modules, and
                           COMMAND itself)
  --workers N              worker processes (default %d)

Every other flag of 'handoff run' works the same: --listen (required),
--ready, timeouts, signals, pid file, logs and the rest (see 'handoff run
--help'); --watch-path here names sources, and --watch does not apply.

A change during a build cancels it; the next build starts once the changes
have been quiet for 100ms, so a burst of saves is one build. The console
shows one line per build and one per rollout; --log-format json gives
every event, builds included.
`

// devQuiet is the debounce of the source watch.
const devQuiet = 100 * time.Millisecond

type devConfig struct {
	build            string
	paths            []string
	include, exclude []string
}

var defaultIncludes = []string{"*.go", "go.mod", "go.sum"}
var defaultExcludes = []string{".git", "vendor", "node_modules"}

func parseDev(args []string, stdout io.Writer) (runtime.Config, logConfig, devConfig, error) {
	var dc devConfig
	c := command{name: "dev", usage: devUsage, workers: 1, flags: func(fs *flag.FlagSet, _ *runtime.Config) func() error {
		var paths, incl, excl listenFlag
		fs.StringVar(&dc.build, "build", "", "")
		fs.Var(&paths, "watch-path", "")
		fs.Var(&incl, "include", "")
		fs.Var(&excl, "exclude", "")
		return func() error {
			if strings.TrimSpace(dc.build) == "" {
				return usageError{errors.New("no --build given: add the build command, e.g. --build 'go build -o bin/server .'")}
			}
			for _, p := range paths.values {
				if p == "" {
					return usageError{errors.New("--watch-path needs a file or directory")}
				}
			}
			for _, g := range append(append([]string(nil), incl.values...), excl.values...) {
				if err := reload.CheckGlob(g); err != nil {
					return usageError{fmt.Errorf("--include/--exclude: %v (see filepath.Match)", err)}
				}
			}
			dc.paths, dc.include, dc.exclude = paths.values, incl.values, excl.values
			if len(dc.paths) == 0 {
				dc.paths = []string{"."}
			}
			if len(dc.include) == 0 {
				dc.include = defaultIncludes
			}
			dc.exclude = append(append([]string(nil), defaultExcludes...), dc.exclude...)
			return nil
		}
	}}
	cfg, lc, err := parseCommand(c, args, stdout)
	return cfg, lc, dc, err
}

// exeState identifies the content of the executable a build writes: a
// build that changed nothing (a comment, a touch) writes the same bytes,
// and there is nothing to roll out.
type exeState struct {
	sum [sha256.Size]byte
	ok  bool
}

func statExe(name string) exeState {
	path, err := exec.LookPath(name)
	if err != nil {
		return exeState{}
	}
	f, err := os.Open(path)
	if err != nil {
		return exeState{}
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return exeState{}
	}
	var st exeState
	h.Sum(st.sum[:0])
	st.ok = true
	return st
}

func devCommand(args []string, sigs chan os.Signal, stdout, stderr io.Writer) error {
	cfg, lc, dc, err := parseDev(args, stdout)
	if err != nil {
		return err
	}
	ws := lockedWriter(stderr)
	log, err := newDevLogger(lc, ws)
	if err != nil {
		return usageError{err}
	}
	builder := &reload.Builder{Command: dc.build}
	if err := builder.Check(); err != nil {
		return fmt.Errorf("--build: %v", err)
	}
	exe := cfg.Command[0]
	excludes := dc.exclude
	if strings.Contains(exe, "/") {
		if abs, err := filepath.Abs(exe); err == nil {
			excludes = append(excludes, abs)
		}
	}
	wcfg := reload.Config{Include: dc.include, Exclude: excludes, Quiet: devQuiet, Logger: log}
	wcfg.Files, wcfg.Trees, err = reload.SplitPaths(dc.paths)
	if err != nil {
		return fmt.Errorf("--watch-path %v; give an existing directory or file", err)
	}
	watcher, err := reload.New(wcfg)
	if err != nil {
		return fmt.Errorf("--watch-path: %v", err)
	}

	d := &dev{log: log, exe: exe, results: make(chan reload.Result)}
	ctx, cancel := context.WithCancel(context.Background())
	changes := make(chan reload.Change)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	wg.Add(2)
	go func() {
		defer wg.Done()
		watcher.Run(ctx, func(c reload.Change) {
			select {
			case changes <- c:
			case <-ctx.Done():
			}
		})
	}()
	loop := &reload.BuildLoop{
		Build:     builder.Run,
		Started:   d.started,
		Cancelled: func(c reload.Change) { log.Info("build cancelled", zap.String("why", "a newer change came")) },
		Done: func(r reload.Result) {
			select {
			case d.results <- r:
			case <-ctx.Done():
			}
		},
	}
	go func() {
		defer wg.Done()
		loop.Run(ctx, changes)
	}()
	log.Info("dev watching", zap.String("paths", strings.Join(dc.paths, " ")), zap.String("include", strings.Join(dc.include, " ")),
		zap.String("build", dc.build), zap.String("command", strings.Join(cfg.Command, " ")))

	d.last = statExe(exe)
	if !d.last.ok {
		// Nothing to serve yet: build first.
		select {
		case changes <- reload.Change{Paths: []string{exe + " (missing)"}}:
		case <-ctx.Done():
		}
	}

	runSigs := make(chan os.Signal, 16)
	logTo(&cfg, log, ws)
	cfg.Signals = runSigs
	var primaryDone chan error
	start := func() {
		primaryDone = make(chan error, 1)
		go func() { primaryDone <- runtime.Run(context.Background(), cfg) }()
	}
	if d.last.ok {
		start()
	}
	for {
		select {
		case sig := <-sigs:
			if primaryDone != nil {
				select {
				case runSigs <- sig:
				default: // 16 queued already: the primary is not reading
				}
				continue
			}
			if sig == syscall.SIGTERM || sig == syscall.SIGINT {
				log.Info("shutdown finished")
				return nil
			}
		case r := <-d.results:
			ok, changed := d.built(r)
			if !ok {
				continue
			}
			if primaryDone == nil {
				if !d.last.ok {
					return fmt.Errorf("the build command succeeded but did not write %s: make --build write COMMAND", exe)
				}
				start()
				continue
			}
			if !changed {
				continue
			}
			// A deploy, exactly as a HUP asks for one; one already
			// queued takes this one in.
			select {
			case runSigs <- syscall.SIGHUP:
			default:
			}
		case err := <-primaryDone:
			return err
		}
	}
}

// dev is the state of 'handoff dev' that its loop reads and its builds
// write.
type dev struct {
	log     *zap.Logger
	exe     string
	results chan reload.Result
	last    exeState // the executable after the last build that succeeded
}

func (d *dev) started(c reload.Change) {
	d.log.Info("build started", zap.String("paths", c.String()))
}

// built logs a build and reports whether it succeeded and whether it
// changed the executable.
func (d *dev) built(r reload.Result) (ok, changed bool) {
	took := r.Took.Round(time.Millisecond)
	if r.Err != nil {
		reason := r.Err.Error()
		if errors.Is(r.Err, reload.ErrCannotStart) {
			reason = "the build command could not start (" + reason + ")"
		}
		d.log.Error("build failed", zap.Duration("duration", took), zap.String("reason", reason),
			zap.String("output", string(r.Output)), zap.String("paths", r.Change.String()))
		return false, false
	}
	now := statExe(d.exe)
	changed = now != d.last
	d.last = now
	d.log.Info("build finished", zap.Duration("duration", took), zap.Bool("changed", changed),
		zap.String("output", string(r.Output)), zap.String("paths", r.Change.String()))
	return true, changed
}
