package main

import (
	"fmt"
	"io"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/handoff-dev/handoff/internal/cpus"
)

// defaultWorkers is the number of CPUs this process may use: its CPU
// affinity, or its cgroup CPU quota rounded up when that is less.
func defaultWorkers() int {
	n, _ := cpus.Available()
	return n
}

// newLogger builds the primary's logger: every event, unsampled, to w.
func newLogger(lc logConfig, w io.Writer) (*zap.Logger, error) {
	level, err := parseLevel(lc)
	if err != nil {
		return nil, err
	}
	ec := zap.NewProductionEncoderConfig()
	ec.EncodeTime = zapcore.ISO8601TimeEncoder
	ec.EncodeDuration = zapcore.StringDurationEncoder
	var enc zapcore.Encoder
	switch lc.format {
	case "json":
		enc = zapcore.NewJSONEncoder(ec)
	case "console":
		ec.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(ec)
	default:
		return nil, fmt.Errorf("--log-format %q: use console or json", lc.format)
	}
	ws := zapcore.Lock(zapcore.AddSync(w))
	return zap.New(zapcore.NewCore(enc, ws, level), zap.ErrorOutput(ws)), nil
}

func parseLevel(lc logConfig) (zapcore.Level, error) {
	level, err := zapcore.ParseLevel(lc.level)
	if err != nil || level > zapcore.ErrorLevel {
		return 0, fmt.Errorf("--log-level %q: use debug, info, warn or error", lc.level)
	}
	return level, nil
}
