package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/handoff-dev/handoff/internal/adopt"
	"github.com/handoff-dev/handoff/reload"
	"github.com/handoff-dev/handoff/runtime"
)

var devCmd = command[runOptions]{
	name: "dev", head: devHead, tail: devTail, column: flagColumn, flags: devFlags,
	also: without(runFlags, "workers", "watch", "watch-path"),
}

const devHead = `Usage: handoff dev [flags] [--build 'CMD'] -- COMMAND [ARG...]

The edit-serve loop: serves COMMAND as 'handoff run' does, watches the
source tree, and rolls every change out one worker at a time, so the port
never goes dark between two versions (tools that kill the server and start
it again drop every request meanwhile). A version that crashes or never
gets ready is refused and the old one keeps serving.

With --build, a change runs the build, and a build that succeeded rolls
out; a build that fails prints the compiler's output. Without --build (a
Node, Python or Ruby server, which needs none), a change rolls out at once:

  handoff dev --listen :3000 --include '*.js' -- node server.js

`

// devFlags are the flags of 'handoff dev' of its own, in the order of its
// --help; it takes those of 'handoff run' too (devCmd).
var devFlags = []flagSpec[runOptions]{
	{
		name: "build", arg: "CMD",
		value: func(o *runOptions) any { return &o.dev.build },
		help: `the build command, run with sh -c in the current
directory; it must write COMMAND. Runs at start
when COMMAND does not exist yet`,
		doc: "the build command, run with `sh -c` in the current directory; " +
			"it must write COMMAND; runs at start when COMMAND does not exist yet",
		docDefault: "none: a change rolls out as it is",
		check: func(o *runOptions) error {
			if o.given["build"] && strings.TrimSpace(o.dev.build) == "" {
				return errors.New("--build is empty: give the build command, e.g. --build 'go build -o bin/server .', or leave --build out for code that needs no build")
			}
			return nil
		},
	},
	{
		name: "watch-path", arg: "PATH",
		value: func(o *runOptions) any { return &o.watchPaths },
		help: `source directory (watched recursively, new
subdirectories included) or file to watch;
repeatable (default: the current directory)`,
		doc: "a source directory (watched recursively, new subdirectories " +
			"included) or file; repeatable",
		docDefault: "the current directory; for a COMMAND of no known kind, its " +
			"executable alone",
		check: func(o *runOptions) error {
			o.dev.paths = o.watchPaths.values
			return checkPaths(o.dev.paths)
		},
	},
	{
		name: "include", arg: "GLOB",
		value: func(o *runOptions) any { return &o.includes },
		help: `files that count, matched against the base name
or the path relative to the watched directory;
repeatable, replaces the default, which is
with --build:   *.go go.mod go.sum
without, by what COMMAND runs:
  node, npm, npx, yarn, pnpm, *.js:
                *.js *.mjs *.cjs *.json
  bun, deno, tsx, ts-node, *.ts: those and
                *.ts *.mts *.cts *.tsx *.jsx
  python, uvicorn, gunicorn, flask, *.py: *.py
  ruby, bundle, rails, puma, rackup, *.rb:
                *.rb *.ru
  anything else: COMMAND's executable alone,
                as 'handoff run --watch'`,
		doc: "files that count, matched against the base name or the path " +
			"relative to the watched directory; repeatable, replaces the default",
		docDefault: "`*.go go.mod go.sum` with `--build`, else by what COMMAND runs " +
			"(the table above)",
		check: func(o *runOptions) error {
			o.dev.include = o.includes.values
			return checkGlobs(o.dev.include)
		},
	},
	{
		name: "exclude", arg: "GLOB",
		value: func(o *runOptions) any { return &o.excludes },
		help: `files and directories to ignore, repeatable, added
to the default: .git vendor node_modules .venv
__pycache__, editor swap and backup files (*.swp
*.swo *.swx *~ .#* #*# 4913 *.tmp), and with
--build COMMAND itself`,
		doc: "files and directories never watched; repeatable, added to the default",
		docDefault: "`.git vendor node_modules .venv __pycache__`, editors' swap " +
			"and backup files, and with `--build` COMMAND itself",
		check: func(o *runOptions) error {
			o.dev.exclude = o.excludes.values
			return checkGlobs(o.dev.exclude)
		},
	},
	workersFlag(1, "worker processes (default %d)", "1"),
}

// checkGlobs refuses an --include or --exclude that does not parse.
func checkGlobs(globs []string) error {
	for _, g := range globs {
		if err := reload.CheckGlob(g); err != nil {
			return fmt.Errorf("--include/--exclude: %v (see filepath.Match)", err)
		}
	}
	return nil
}

const devTail = `
Every other flag of 'handoff run' works the same: --listen (required),
--ready, timeouts, signals, pid file, logs and the rest (see 'handoff run
--help'); --watch-path here names sources, and --watch does not apply.

Readiness: without --ready, where binds are adopted (--adopt-bind auto or
on, and the system allows it) a worker is ready as it binds its port, or
sends READY=1, or else once it has run 1s; the old one retires then, so
the new version answers as soon as it listens, and alone. Elsewhere the
default is delay:1s. The first console line says which.

Changes within 100ms are one change. A change during a build cancels it and
builds again, so a burst of saves is one build. The console shows one line
per build, change and rollout, and the workers' lines (w0:PID| ...);
--log-format json gives every event, builds included.

Signals: HUP rolls out what is there now, as in 'handoff run'; before
anything serves (the first build failed, or runs), it builds again. TTIN
and TTOU add and remove a worker, also when sent before the first workers
start. TERM and INT stop.
`

// devQuiet is the debounce of the source watch.
const devQuiet = 100 * time.Millisecond

type devConfig struct {
	build            string
	paths            []string
	include, exclude []string
	// exe: watch COMMAND's executable (no --build, and no include for
	// what it runs).
	exe bool
	// ready is --ready as given, "" when left to dev (devReadiness).
	ready string
}

var (
	goIncludes = []string{"*.go", "go.mod", "go.sum"}
	// defaultExcludes are never watched: tools' trees, and what editors
	// write beside a file as they save it (vim: .x.swp, .x.swo, .x.swx,
	// x~, 4913; emacs: .#x, #x#, x~; others: x.tmp).
	defaultExcludes = []string{".git", "vendor", "node_modules", ".venv", "__pycache__",
		"*.swp", "*.swo", "*.swx", "*~", ".#*", "#*#", "4913", "*.tmp"}
)

// Sources by what a command runs, for 'handoff dev' without --build.
var (
	jsIncludes = []string{"*.js", "*.mjs", "*.cjs", "*.json"}
	tsIncludes = append(slices.Clone(jsIncludes), "*.ts", "*.mts", "*.cts", "*.tsx", "*.jsx")
	pyIncludes = []string{"*.py"}
	rbIncludes = []string{"*.rb", "*.ru"}
	runners    = map[string][]string{
		"node": jsIncludes, "nodejs": jsIncludes, "npm": jsIncludes, "npx": jsIncludes, "yarn": jsIncludes,
		"pnpm": jsIncludes, "nodemon": jsIncludes,
		"bun": tsIncludes, "deno": tsIncludes, "tsx": tsIncludes, "ts-node": tsIncludes,
		"python": pyIncludes, "python3": pyIncludes, "pypy": pyIncludes, "pypy3": pyIncludes, "uvicorn": pyIncludes,
		"gunicorn": pyIncludes, "hypercorn": pyIncludes, "granian": pyIncludes, "flask": pyIncludes,
		"fastapi": pyIncludes, "daphne": pyIncludes, "waitress-serve": pyIncludes, "uv": pyIncludes,
		"ruby": rbIncludes, "bundle": rbIncludes, "rails": rbIncludes, "puma": rbIncludes, "rackup": rbIncludes,
		"unicorn": rbIncludes, "falcon": rbIncludes, "thin": rbIncludes,
	}
	scriptIncludes = map[string][]string{
		".js": jsIncludes, ".mjs": jsIncludes, ".cjs": jsIncludes,
		".ts": tsIncludes, ".mts": tsIncludes, ".tsx": tsIncludes,
		".py": pyIncludes, ".rb": rbIncludes, ".ru": rbIncludes,
	}
	pythonVersioned = regexp.MustCompile(`^python[0-9.]+$`)
)

// sourcesOf is what 'handoff dev' watches without --build for command:
// the sources of the interpreter or server it runs (through env and its
// variables), or of the script it is; nil when it cannot tell.
func sourcesOf(command []string) []string {
	args := command
	if len(args) > 0 && filepath.Base(args[0]) == "env" {
		args = args[1:]
		for len(args) > 0 && (strings.Contains(args[0], "=") || strings.HasPrefix(args[0], "-")) {
			args = args[1:]
		}
	}
	if len(args) == 0 {
		return nil
	}
	name := filepath.Base(args[0])
	if inc, ok := runners[name]; ok {
		return inc
	}
	if pythonVersioned.MatchString(name) {
		return pyIncludes
	}
	return scriptIncludes[filepath.Ext(name)]
}

func parseDev(args []string, stdout io.Writer) (runtime.Config, logConfig, devConfig, error) {
	o, err := parseCommand(devCmd, args, stdout)
	if err == nil {
		o.devDefaults()
	}
	return o.cfg, o.log, o.dev, err
}

// devDefaults completes o.dev with what was not given.
func (o *runOptions) devDefaults() {
	dc := &o.dev
	if o.given["ready"] {
		dc.ready = o.ready
	}
	if len(dc.include) == 0 {
		if dc.build != "" {
			dc.include = goIncludes
		} else {
			dc.include = sourcesOf(o.cfg.Command)
		}
	}
	// A command of no known kind: its executable is what changes.
	dc.exe = len(dc.include) == 0
	if len(dc.paths) == 0 && !dc.exe {
		dc.paths = []string{"."}
	}
	dc.exclude = append(slices.Clone(defaultExcludes), dc.exclude...)
}

// devReadyDelay is how long a worker of 'handoff dev' that neither binds
// its port nor says it is ready runs before it counts as ready.
const devReadyDelay = time.Second

// probeAdoption says why binds cannot be adopted here (nil: they can);
// tests put an answer in its place.
var probeAdoption = adopt.Probe

// devReadiness sets how 'handoff dev' learns that a worker is ready, when
// --ready was not given, and returns it in words. Where binds are adopted
// (--adopt-bind auto or on, and the system allows it), a worker is ready
// as it binds its port (or sends READY=1): the old one retires before the
// new one accepts, so the new version answers as soon as it listens, and
// alone. A worker that takes its socket from LISTEN_FDS and says nothing
// is ready after devReadyDelay, as everywhere without adoption.
func devReadiness(cfg *runtime.Config) string {
	fallback := func(why string) string {
		cfg.Ready, cfg.ReadyDelay = runtime.ReadyDelay, devReadyDelay
		return fmt.Sprintf("delay:%s (bind adoption off: %s)", devReadyDelay, why)
	}
	if cfg.AdoptBind == runtime.AdoptOff {
		return fallback("--adopt-bind off")
	}
	if err := probeAdoption(); err != nil {
		return fallback(err.Error())
	}
	cfg.Ready, cfg.ReadyDelay = runtime.ReadyBind, devReadyDelay
	return fmt.Sprintf("bind (or READY=1; else after %s)", devReadyDelay)
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
	builder, err := devBuilder(dc.build)
	if err != nil {
		return err
	}
	exe := cfg.Command[0]
	watcher, watched, err := devWatcher(exe, dc, builder != nil, log)
	if err != nil {
		return err
	}

	d := &dev{log: log, exe: exe, results: make(chan reload.Result), changes: make(chan reload.Change)}
	var cancel context.CancelFunc
	d.ctx, cancel = context.WithCancel(context.Background())
	defer func() {
		cancel()
		d.wg.Wait()
	}()
	d.watch(watcher)
	// sourceChanges: the changes the loop acts on itself (no --build).
	sourceChanges := d.changes
	if builder != nil {
		sourceChanges = nil
		d.startBuilds(builder)
	}
	ready := dc.ready
	if ready == "" {
		ready = devReadiness(&cfg)
	}
	log.Info("dev watching", zap.String("paths", watched), zap.String("include", strings.Join(dc.include, " ")),
		zap.String("build", dc.build), zap.String("command", strings.Join(cfg.Command, " ")), zap.String("ready", ready))

	if builder != nil {
		d.last = statExe(exe)
		if !d.last.ok {
			// Nothing to serve yet: build first.
			d.rebuild(reload.Change{Paths: []string{exe + " (missing)"}})
		}
	}
	p := newDevPrimary(cfg, log, ws)
	defer p.queue.close()
	if builder == nil || d.last.ok {
		p.start()
	}
	return d.loop(sigs, sourceChanges, p)
}

// devBuilder is the build of --build; nil without one.
func devBuilder(build string) (*reload.Builder, error) {
	if build == "" {
		return nil, nil
	}
	b := &reload.Builder{Command: build}
	if err := b.Check(); err != nil {
		return nil, fmt.Errorf("--build: %v", err)
	}
	return b, nil
}

// devWatcher watches the sources dc names and, for a command of no known
// kind, its executable exe; watched is what it watches, in words.
// building: exe is what --build writes, and no source.
func devWatcher(exe string, dc devConfig, building bool, log *zap.Logger) (w *reload.Watcher, watched string, err error) {
	excludes := dc.exclude
	if building && strings.Contains(exe, "/") {
		// What the build writes is no source.
		if abs, err := filepath.Abs(exe); err == nil {
			excludes = append(excludes, abs)
		}
	}
	wcfg := reload.Config{Include: dc.include, Exclude: excludes, Quiet: devQuiet, Logger: log}
	wcfg.Files, wcfg.Trees, err = reload.SplitPaths(dc.paths)
	if err != nil {
		return nil, "", fmt.Errorf("--watch-path %v; give an existing directory or file", err)
	}
	watched = strings.Join(dc.paths, " ")
	if dc.exe {
		path, err := exec.LookPath(exe)
		if err != nil {
			return nil, "", fmt.Errorf("%s: not found: put the server's executable after --, or give --build to build it", exe)
		}
		if path, err = filepath.Abs(path); err == nil {
			wcfg.Executables = []string{path}
		}
		watched = strings.TrimSpace(path + " " + watched)
	}
	if w, err = reload.New(wcfg); err != nil {
		return nil, "", fmt.Errorf("--watch-path: %v", err)
	}
	return w, watched, nil
}

// devPrimary is the primary of 'handoff dev' and the queue of the signals
// for it: every one reaches it, in order, also those sent before it runs
// (it reads them once it does).
type devPrimary struct {
	cfg   runtime.Config
	queue *signalQueue
	done  chan error // nil until it starts
}

func newDevPrimary(cfg runtime.Config, log *zap.Logger, ws zapcore.WriteSyncer) *devPrimary {
	sigs := make(chan os.Signal, 16)
	logTo(&cfg, log, ws)
	cfg.Signals = sigs
	return &devPrimary{cfg: cfg, queue: newSignalQueue(sigs)}
}

func (p *devPrimary) start() {
	done := make(chan error, 1)
	p.done = done
	go func() { done <- runtime.Run(context.Background(), p.cfg) }()
}

// loop runs 'handoff dev' until it stops: it passes the signals on to the
// primary p, and rolls out the changes (without --build) and the builds.
func (d *dev) loop(sigs <-chan os.Signal, sourceChanges <-chan reload.Change, p *devPrimary) error {
	for {
		select {
		case sig := <-sigs:
			if d.signal(sig, p) {
				d.log.Info("shutdown finished")
				return nil
			}
		case c := <-sourceChanges:
			// No build: the change is the new version.
			d.log.Info("change detected", zap.String("paths", c.String()))
			p.queue.send(syscall.SIGHUP)
		case r := <-d.results:
			if err := d.rollOut(r, p); err != nil {
				return err
			}
		case err := <-p.done:
			return err
		}
	}
}

// signal passes sig on to the primary p, or acts on it while none runs;
// stop: 'handoff dev' is to stop now.
func (d *dev) signal(sig os.Signal, p *devPrimary) (stop bool) {
	switch {
	case p.done != nil:
		p.queue.send(sig)
	case sig == syscall.SIGTERM || sig == syscall.SIGINT:
		return true
	case sig == syscall.SIGHUP:
		// Nothing serves yet: build again now.
		d.rebuild(reload.Change{Paths: []string{"SIGHUP"}})
	default:
		// TTIN, TTOU: for the primary once it runs.
		p.queue.send(sig)
	}
	return false
}

// rollOut acts on a build's result r: the first build that succeeds
// starts the primary p, a later one that changed the executable is
// deployed.
func (d *dev) rollOut(r reload.Result, p *devPrimary) error {
	ok, changed := d.built(r)
	switch {
	case !ok:
	case p.done == nil:
		if !d.last.ok {
			return fmt.Errorf("the build command succeeded but did not write %s: make --build write COMMAND", d.exe)
		}
		p.start()
	case changed:
		// A deploy, exactly as a HUP asks for one; one already queued
		// takes this one in.
		p.queue.send(syscall.SIGHUP)
	}
	return nil
}

// signalQueue passes signals on to the primary's channel in the order
// they came, never dropping one, however long the primary does not read
// (it is starting, or stopping): a goroutine holds what the channel has
// no room for. A HUP already waiting takes in a further one, as the
// primary would fold them into one deploy anyway.
type signalQueue struct {
	in   chan os.Signal
	done chan struct{}
	wg   sync.WaitGroup
}

func newSignalQueue(out chan<- os.Signal) *signalQueue {
	q := &signalQueue{in: make(chan os.Signal), done: make(chan struct{})}
	q.wg.Add(1)
	go func() {
		defer q.wg.Done()
		var pending []os.Signal
		for {
			var next os.Signal
			var to chan<- os.Signal // nil, and so never ready, with nothing pending
			if len(pending) > 0 {
				next, to = pending[0], out
			}
			select {
			case sig := <-q.in:
				if sig == syscall.SIGHUP && slices.Contains(pending, sig) {
					continue
				}
				pending = append(pending, sig)
			case to <- next:
				pending = pending[1:]
			case <-q.done:
				return
			}
		}
	}()
	return q
}

// send queues sig for the primary; it does not wait for the primary.
func (q *signalQueue) send(sig os.Signal) {
	select {
	case q.in <- sig:
	case <-q.done:
	}
}

// close stops passing signals on.
func (q *signalQueue) close() {
	close(q.done)
	q.wg.Wait()
}

// dev is the state of 'handoff dev' that its loop reads and its builds
// write.
type dev struct {
	log     *zap.Logger
	exe     string
	results chan reload.Result
	last    exeState // the executable after the last build that succeeded

	// ctx ends the watch and the builds, which wg waits for.
	ctx context.Context
	wg  sync.WaitGroup
	// changes are the watch's; with --build (building) the builds read
	// them.
	changes  chan reload.Change
	building bool
}

// watch runs w until d.ctx ends, its changes going to d.changes.
func (d *dev) watch(w *reload.Watcher) {
	d.wg.Go(func() { w.Run(d.ctx, d.send) })
}

// send passes c on to d.changes, unless d.ctx ends first.
func (d *dev) send(c reload.Change) {
	select {
	case d.changes <- c:
	case <-d.ctx.Done():
	}
}

// startBuilds runs b for the changes until d.ctx ends, the results going
// to d.results.
func (d *dev) startBuilds(b *reload.Builder) {
	d.building = true
	loop := &reload.BuildLoop{
		Build:     b.Run,
		Started:   d.started,
		Cancelled: func(reload.Change) { d.log.Info("build cancelled", zap.String("why", "a newer change came")) },
		Done: func(r reload.Result) {
			select {
			case d.results <- r:
			case <-d.ctx.Done():
			}
		},
	}
	d.wg.Go(func() { loop.Run(d.ctx, d.changes) })
}

// rebuild asks for a build, as a change does, without blocking; nothing
// without --build.
func (d *dev) rebuild(c reload.Change) {
	if !d.building {
		return
	}
	d.wg.Go(func() { d.send(c) })
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
