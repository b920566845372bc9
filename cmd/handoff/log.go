package main

import (
	"fmt"
	"io"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/handoff-dev/handoff/internal/cpus"
	"github.com/handoff-dev/handoff/runtime"
)

// defaultWorkers is the number of CPUs this process may use: its CPU
// affinity, or its cgroup CPU quota rounded up when that is less.
func defaultWorkers() int {
	n, _ := cpus.Available()
	return n
}

// lockedWriter is the primary's stderr as its log and the workers' stderr
// lines share it: every write under one lock, so that a worker's line
// never lands inside an event.
func lockedWriter(w io.Writer) zapcore.WriteSyncer {
	return zapcore.Lock(zapcore.AddSync(w))
}

// encoderConfig is the encoding of every event: the primary's own and,
// with --worker-output json, the workers' lines.
func encoderConfig() zapcore.EncoderConfig {
	ec := zap.NewProductionEncoderConfig()
	ec.EncodeTime = zapcore.ISO8601TimeEncoder
	ec.EncodeDuration = zapcore.StringDurationEncoder
	return ec
}

// newLogger builds the primary's logger: every event, unsampled, to ws
// (a lockedWriter).
func newLogger(lc logConfig, ws zapcore.WriteSyncer) (*zap.Logger, error) {
	level, err := parseLevel(lc)
	if err != nil {
		return nil, err
	}
	if err := checkLogFormat(lc.format); err != nil {
		return nil, err
	}
	ec := encoderConfig()
	enc := zapcore.NewJSONEncoder(ec)
	if lc.format == "console" {
		ec.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(ec)
	}
	return zap.New(zapcore.NewCore(enc, ws, level), zap.ErrorOutput(ws)), nil
}

// logTo makes the workers' lines go where the log goes, ws, under its
// lock; json lines are encoded as the primary's json events are.
func logTo(cfg *runtime.Config, log *zap.Logger, ws zapcore.WriteSyncer) {
	cfg.Logger = log
	cfg.WorkerStderr = ws
	cfg.WorkerOutputEncoder = zapcore.NewJSONEncoder(encoderConfig())
}

// checkLogFormat refuses a --log-format other than console and json.
func checkLogFormat(format string) error {
	if format != "console" && format != "json" {
		return fmt.Errorf("--log-format %q: use console or json", format)
	}
	return nil
}

func parseLevel(lc logConfig) (zapcore.Level, error) {
	level, err := zapcore.ParseLevel(lc.level)
	if err != nil || level > zapcore.ErrorLevel {
		return 0, fmt.Errorf("--log-level %q: use debug, info, warn or error", lc.level)
	}
	return level, nil
}
