// Command hello is a Go HTTP server in handoff's library mode: the same
// binary is the primary and its workers, as with Node's cluster module.
// Run it, rebuild it in place, send SIGHUP to the pid in the pid file, and
// the new version serves with no failed request:
//
//	go build -o hello ./examples/hello
//	./hello --listen 127.0.0.1:8080 --workers 2 --pid-file hello.pid &
//	curl 127.0.0.1:8080                  # dev pid=…
//	go build -ldflags "-X main.version=v2" -o hello.new ./examples/hello
//	mv hello.new hello
//	kill -HUP $(cat hello.pid)
//	curl 127.0.0.1:8080                  # v2 pid=…
//
// HANDOFF_STANDALONE=1 ./hello serves in one process, for debugging.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/handoff-dev/handoff/runtime"
)

// version is set at build time: go build -ldflags "-X main.version=v2".
var version = "dev"

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to serve: HOST:PORT or unix:PATH")
	workers := flag.Int("workers", 0, "worker processes (default: the CPUs available)")
	pidFile := flag.String("pid-file", "", "file holding the primary's pid, for kill -HUP")
	drainTimeout := flag.Duration("drain-timeout", runtime.DefaultDrainTimeout, "time a retiring worker has to drain")
	logFormat := flag.String("log-format", "console", "console or json")
	watch := flag.Bool("watch", false, "deploy whenever this program's executable is replaced (a new build), without a HUP")
	minUptime := flag.Duration("min-uptime", runtime.DefaultMinUptime, "a deploy's probation: a new worker that exits sooner after it is ready fails the deploy, which is rolled back (0: off)")
	flag.Parse()
	if *minUptime == 0 {
		*minUptime = -1 // off: Config's 0 is the default
	}

	l, err := runtime.ParseListen(*listen, 0)
	if err != nil {
		fail(err)
	}
	// The log and the workers' stderr lines share stderr, under one lock.
	stderr := zapcore.Lock(os.Stderr)
	log, enc, err := newLogger(*logFormat, stderr)
	if err != nil {
		fail(err)
	}
	output := runtime.OutputPrefix // "w0:4242| line"
	if *logFormat == "json" {
		output = runtime.OutputJSON // one JSON object per line, throughout
	}
	err = runtime.Main(context.Background(), runtime.App{
		Config: runtime.Config{
			Listeners:    []runtime.Listener{l},
			Workers:      *workers,
			PIDFile:      *pidFile,
			DrainTimeout: *drainTimeout,
			MinUptime:    *minUptime,
			Watch:        *watch,
			Logger:       log,
			// The workers' lines: labelled with their slot and pid, or
			// JSON events encoded as the log's.
			WorkerOutput:        output,
			WorkerStderr:        stderr,
			WorkerOutputEncoder: enc,
		},
		Worker: func(ctx context.Context, w *runtime.Worker) error {
			srv := &http.Server{
				Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
					fmt.Fprintf(rw, "%s pid=%d\n", version, os.Getpid())
				}),
				ReadHeaderTimeout: 10 * time.Second,
			}
			// Ready once serving; drains with no lost request on TERM.
			return w.Serve(srv, nil)
		},
	})
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "hello:", err)
	os.Exit(1)
}

// newLogger returns the logger and the JSON encoder of the workers' lines.
func newLogger(format string, w zapcore.WriteSyncer) (*zap.Logger, zapcore.Encoder, error) {
	jsonEnc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	var enc zapcore.Encoder
	switch format {
	case "json":
		enc = jsonEnc
	case "console":
		enc = zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig())
	default:
		return nil, nil, fmt.Errorf("--log-format %q: use console or json", format)
	}
	return zap.New(zapcore.NewCore(enc, w, zap.InfoLevel)), jsonEnc, nil
}
