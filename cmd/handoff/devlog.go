package main

import (
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// newDevLogger is the logger of 'handoff dev': with --log-format json the
// same events as 'handoff run' (and the builds'); with console, lines for
// a developer at a terminal: one per build, one per rollout, and warnings.
func newDevLogger(lc logConfig, ws zapcore.WriteSyncer) (*zap.Logger, error) {
	if lc.format != "console" {
		return newLogger(lc, ws)
	}
	level, err := parseLevel(lc)
	if err != nil {
		return nil, err
	}
	return zap.New(&devCore{LevelEnabler: level, out: ws, all: level <= zapcore.DebugLevel}, zap.ErrorOutput(ws)), nil
}

// devCore writes the events a developer wants to see as short lines.
type devCore struct {
	zapcore.LevelEnabler
	out    zapcore.WriteSyncer
	fields []zapcore.Field
	all    bool // every event, as "LEVEL msg key=value ..."
}

func (c *devCore) With(fs []zapcore.Field) zapcore.Core {
	cc := *c
	cc.fields = append(slices.Clip(c.fields), fs...)
	return &cc
}

func (c *devCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}

func (c *devCore) Sync() error { return c.out.Sync() }

func (c *devCore) Write(e zapcore.Entry, fs []zapcore.Field) error {
	enc := zapcore.NewMapObjectEncoder()
	for _, f := range c.fields {
		f.AddTo(enc)
	}
	for _, f := range fs {
		f.AddTo(enc)
	}
	line := devLine(e, devFields(enc.Fields), c.all)
	if line == "" {
		return nil
	}
	_, err := io.WriteString(c.out, e.Time.Format("15:04:05")+" "+line+"\n")
	return err
}

type devFields map[string]any

func (f devFields) str(k string) string {
	if v, ok := f[k]; ok {
		return fmt.Sprint(v)
	}
	return ""
}

func (f devFields) dur(k string) string {
	if d, ok := f[k].(time.Duration); ok {
		switch {
		case d >= time.Second:
			return d.Round(10 * time.Millisecond).String()
		default:
			return d.Round(time.Millisecond).String()
		}
	}
	return f.str(k)
}

// indent sets text off under its line.
func indent(text string) string {
	text = strings.TrimRight(text, "\n")
	if text == "" {
		return ""
	}
	return "\n    " + strings.ReplaceAll(text, "\n", "\n    ")
}

// devLine renders one event, or "" to leave it out.
func devLine(e zapcore.Entry, f devFields, all bool) string {
	if render, ok := devLines[e.Message]; ok {
		return render(f)
	}
	if e.Level < zapcore.WarnLevel && !all {
		return ""
	}
	if e.Message == "worker exited" {
		return fmt.Sprintf("worker %s (pid %s) exited: %s%s", f.str("slot"), f.str("pid"), f.str("status"), indent(f.str("stderr")))
	}
	keys := make([]string, 0, len(f))
	for k := range f {
		if k != "primary" {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString(e.Level.CapitalString() + " " + e.Message)
	for _, k := range keys {
		fmt.Fprintf(&b, " %s=%s", k, f.str(k))
	}
	return b.String()
}

// devLines render the events a developer follows, by message, whatever
// their level ("": left out).
var devLines = map[string]func(devFields) string{
	"dev watching":    devWatchingLine,
	"change detected": devChangeLine,
	"build finished": func(f devFields) string {
		if f["changed"] == false {
			return fmt.Sprintf("build ok in %s, executable unchanged: nothing to roll out", f.dur("duration"))
		}
		return fmt.Sprintf("build ok in %s", f.dur("duration"))
	},
	"build failed": devBuildFailedLine,
	"listening":    func(f devFields) string { return "listening on " + f.str("addr") },
	"primary ready": func(f devFields) string {
		return fmt.Sprintf("serving: %s worker(s), generation %s", f.str("workers"), f.str("generation"))
	},
	"upgrade took over": func(f devFields) string {
		if _, ok := f["probation"]; !ok {
			return "" // "upgrade finished" follows at once
		}
		return fmt.Sprintf("rollout: generation %s serving in %s, on probation for %s", f.str("generation"), f.dur("duration"), f.dur("probation"))
	},
	"upgrade finished": devUpgradeFinishedLine,
	"upgrade aborted": func(f devFields) string {
		return fmt.Sprintf("rollout failed: generation %s: %s; the old version keeps serving%s", f.str("generation"), f.str("reason"), indent(f.str("stderr")))
	},
	// "upgrade rolled back" follows, with the reason.
	"upgrade rolling back": func(devFields) string { return "" },
	"upgrade rolled back": func(f devFields) string {
		return fmt.Sprintf("rollout rolled back: generation %s: %s; generation %s serving%s", f.str("generation"), f.str("reason"), f.str("to"), indent(f.str("stderr")))
	},
	"shutdown started":  func(devFields) string { return "shutting down" },
	"shutdown finished": func(devFields) string { return "stopped" },
}

func devWatchingLine(f devFields) string {
	ready := ""
	if r := f.str("ready"); r != "" {
		ready = "; ready: " + r
	}
	if f.str("build") == "" {
		what := f.str("paths")
		if inc := f.str("include"); inc != "" {
			what += " (" + inc + ")"
		}
		return fmt.Sprintf("watching %s; serve: %s%s; every change rolls out", what, f.str("command"), ready)
	}
	return fmt.Sprintf("watching %s (%s); build: %s; serve: %s%s", f.str("paths"), f.str("include"), f.str("build"), f.str("command"), ready)
}

func devChangeLine(f devFields) string {
	// Paths below the current directory, as the developer named them.
	paths := f.str("paths")
	if wd, err := os.Getwd(); err == nil {
		paths = strings.ReplaceAll(paths, wd+string(os.PathSeparator), "")
	}
	return "changed: " + paths
}

func devBuildFailedLine(f devFields) string {
	out := indent(f.str("output"))
	if out == "" {
		out = ": " + f.str("reason")
	} else if strings.Contains(f.str("reason"), "could not start") {
		out = ": " + f.str("reason") + out
	}
	return fmt.Sprintf("build failed in %s%s", f.dur("duration"), out)
}

func devUpgradeFinishedLine(f devFields) string {
	took, done := f.dur("took_over"), f.dur("duration")
	if _, ok := f["took_over"]; !ok || took == done {
		return fmt.Sprintf("rollout ok: generation %s in %s", f.str("generation"), done)
	}
	passed := "passed probation at " + done
	if f.str("probation") != "" {
		passed = "probation " + f.str("probation") + " at " + done
	}
	return fmt.Sprintf("rollout ok: generation %s took over in %s, %s", f.str("generation"), took, passed)
}
