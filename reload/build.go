package reload

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Builder runs a build command line. The line is given to `sh -c`, as a
// Makefile recipe is, so it may use quoting, variables, `&&` and pipes.
type Builder struct {
	// Command is the shell command line.
	Command string
	// Dir is where it runs; "" means the current directory.
	Dir string
	// Env is its environment; nil means this process's.
	Env []string
	// StopDelay bounds the wait after a cancelled build was interrupted
	// before its processes are killed; default 3s.
	StopDelay time.Duration
}

// maxOutput bounds the output a build keeps (its end is kept).
const maxOutput = 256 << 10

// plainWord is a first word that names a program to look up.
var plainWord = regexp.MustCompile(`^[A-Za-z0-9_./+-]+$`)

// shellWords are the first words that `sh` itself knows, not looked up.
var shellWords = map[string]bool{
	"!": true, ".": true, ":": true, "cd": true, "command": true, "eval": true, "exec": true, "export": true,
	"for": true, "if": true, "case": true, "while": true, "until": true, "set": true, "test": true, "[": true,
	"true": true, "false": true, "echo": true, "printf": true, "umask": true, "unset": true, "exit": true,
}

// Check reports, before any build runs, whether the command can start: it
// is not empty, `sh` exists and accepts its syntax, and its first word, if
// it names a program, is found (in PATH, or as a path).
func (b *Builder) Check() error {
	line := strings.TrimSpace(b.Command)
	if line == "" {
		return errors.New("the build command is empty")
	}
	sh, err := exec.LookPath("sh")
	if err != nil {
		return errors.New("no sh in PATH to run the build command")
	}
	var out bytes.Buffer
	syntax := exec.Command(sh, "-n", "-c", line)
	syntax.Dir, syntax.Env, syntax.Stdout, syntax.Stderr = b.Dir, b.Env, &out, &out
	if err := syntax.Run(); err != nil {
		return fmt.Errorf("build command %q does not parse: %s", line, lastLineOf(out.String(), err.Error()))
	}
	first := strings.Fields(line)[0]
	if !plainWord.MatchString(first) || shellWords[first] || strings.Contains(first, "=") {
		return nil
	}
	if strings.Contains(first, "/") && b.Dir != "" && !strings.HasPrefix(first, "/") {
		first = b.Dir + "/" + first
	}
	if _, err := exec.LookPath(first); err != nil {
		var ee *exec.Error
		if errors.As(err, &ee) && errors.Is(ee.Err, exec.ErrNotFound) {
			return fmt.Errorf("build command %q cannot start: %s is not found in PATH", line, first)
		}
		return fmt.Errorf("build command %q cannot start: %s: %v", line, first, describe(err))
	}
	return nil
}

func lastLineOf(s, fallback string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	if s == "" {
		return fallback
	}
	return s
}

// ErrCannotStart is a build that `sh` could not run: the command was not
// found or not executable (exit status 127 or 126).
var ErrCannotStart = errors.New("the build command could not start")

// Run runs the build once and returns its output (stdout and stderr
// together, the last maxOutput bytes). The end of ctx interrupts the
// build's whole process group, then kills what is left after StopDelay;
// Run returns only once every process of the build has gone.
func (b *Builder) Run(ctx context.Context) ([]byte, error) {
	delay := b.StopDelay
	if delay <= 0 {
		delay = 3 * time.Second
	}
	out := &tailBuffer{max: maxOutput}
	cmd := exec.CommandContext(ctx, "sh", "-c", b.Command)
	cmd.Dir, cmd.Env, cmd.Stdout, cmd.Stderr = b.Dir, b.Env, out, out
	// Its own process group, so that a cancel reaches the compilers too,
	// and a Ctrl-C at the terminal reaches handoff, which cancels.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGINT) }
	cmd.WaitDelay = delay
	err := cmd.Run()
	if cmd.Process != nil {
		// Whatever of the group outlived its leader.
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	if ctx.Err() != nil {
		return out.Bytes(), context.Cause(ctx)
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) && (ee.ExitCode() == 126 || ee.ExitCode() == 127) {
		return out.Bytes(), fmt.Errorf("%w (%v)", ErrCannotStart, err)
	}
	return out.Bytes(), err
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
	max int
	cut bool
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.max:]...)
		t.cut = true
	}
	return len(p), nil
}

func (t *tailBuffer) Bytes() []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.cut {
		return append([]byte("[…]\n"), t.buf...)
	}
	return append([]byte(nil), t.buf...)
}

// Result is one build that ran to its end.
type Result struct {
	// Change is what the build was for (all the changes since the last
	// build that ran to its end, cancelled ones included).
	Change Change
	Output []byte
	// Err is nil for a build that succeeded.
	Err  error
	Took time.Duration
}

// BuildLoop runs a build for every change, one at a time: a change during
// a build cancels it, and the build starts again with the newer change.
// Changes come debounced (from a Watcher), so a burst of saves is one
// build.
type BuildLoop struct {
	// Build runs one build; its context ends when a newer change makes it
	// stale. Builder.Run fits.
	Build func(ctx context.Context) ([]byte, error)
	// Started, if set, is told about every build that starts; Cancelled
	// about every build that a newer change stopped.
	Started, Cancelled func(Change)
	// Done receives every build that ran to its end, in order.
	Done func(Result)
}

// errStale cancels a build that a newer change made stale.
var errStale = errors.New("a newer change came")

// Run builds on every change from changes until ctx ends; then it stops a
// running build and returns once it has gone.
func (l *BuildLoop) Run(ctx context.Context, changes <-chan Change) {
	r := &buildRuns{l: l, ctx: ctx, done: make(chan buildOutcome, 1)}
	for {
		select {
		case c := <-changes:
			r.changed(c)
		case o := <-r.done:
			r.finished(o)
		case <-ctx.Done():
			r.stop()
			return
		}
	}
}

// buildOutcome is how a build ended.
type buildOutcome struct {
	out  []byte
	err  error
	took time.Duration
}

// buildRuns is Run's state: the build that runs, if one does, and the
// change that waits for the next one.
type buildRuns struct {
	l       *BuildLoop
	ctx     context.Context
	done    chan buildOutcome
	running bool
	bctx    context.Context
	cancel  context.CancelCauseFunc
	current Change // what the running build is for
	pending *Change
}

// start builds for the pending change.
func (r *buildRuns) start() {
	r.current, r.pending = *r.pending, nil
	r.bctx, r.cancel = context.WithCancelCause(r.ctx)
	r.running = true
	if r.l.Started != nil {
		r.l.Started(r.current)
	}
	go func(ctx context.Context) {
		t0 := time.Now()
		out, err := r.l.Build(ctx)
		r.done <- buildOutcome{out, err, time.Since(t0)}
	}(r.bctx)
}

// changed adds c to the pending change, and starts a build for it, or
// cancels the running one, made stale.
func (r *buildRuns) changed(c Change) {
	if r.pending == nil {
		r.pending = &Change{}
	}
	merged := merge(*r.pending, c)
	r.pending = &merged
	if r.running {
		r.cancel(errStale)
		return
	}
	r.start()
}

// finished reports the build that ended with o, as Done, or as Cancelled
// if a newer change made it stale (its change is then pending again), and
// starts the next build if a change is pending.
func (r *buildRuns) finished(o buildOutcome) {
	r.running = false
	stale := errors.Is(context.Cause(r.bctx), errStale)
	r.cancel(nil)
	if stale {
		if r.l.Cancelled != nil {
			r.l.Cancelled(r.current)
		}
		merged := merge(r.current, *r.pending)
		r.pending = &merged
	} else if r.l.Done != nil {
		r.l.Done(Result{Change: r.current, Output: o.out, Err: o.err, Took: o.took})
	}
	if r.pending != nil {
		r.start()
	}
}

// stop cancels the running build, if one runs, and waits for it.
func (r *buildRuns) stop() {
	if r.running {
		r.cancel(r.ctx.Err())
		<-r.done
	}
}

// merge is both changes' paths, sorted, at most 20.
func merge(a, b Change) Change {
	seen := map[string]bool{}
	out := Change{Lost: a.Lost + b.Lost}
	for _, p := range append(append([]string(nil), a.Paths...), b.Paths...) {
		if seen[p] {
			continue
		}
		seen[p] = true
		if len(out.Paths) < 20 {
			out.Paths = append(out.Paths, p)
		} else {
			out.Lost++
		}
	}
	slices.Sort(out.Paths)
	return out
}
