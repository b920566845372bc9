// Command libapp is the library-mode program of handoff's integration
// tests: its own primary (runtime.Main), exercising the message channel.
//
// Build-time knobs: -X main.version=v2; -X main.mode=crash makes every
// worker exit 3 at start (a build whose primary starts but whose workers
// never get ready).
//
// Flags: --listen, --workers, --pid-file, --log-format json|console, and
// --tick (how often the primary broadcasts).
//
// The primary broadcasts {"tick":n} and sends each slot {"direct":n,
// "slot":i} every --tick, and answers every {"ask":id} from a worker with
// {"answer":id,"primary":pid,"slot":s,"pid":p} (Message.Reply).
//
// The primary's App.Primary logs "app primary started" and "app primary
// ended" (with "primary": its pid).
//
// Workers say STATUS=libapp <version> serving, then answer HTTP:
//
//	/       "<version> pid=<pid> worker=<slot> gen=<generation>"
//	/ask    sends {"ask":id} to the primary and waits (5s) for the answer:
//	        "answer primary=<pid> to=<pid> slot=<slot>" (500 without one)
//	/stats  "ticks=<n> directs=<n> mismatches=<n> pid=<pid>": messages
//	        received; a mismatch is a direct message for another slot, or
//	        an answer naming another worker
//	/panic?in=onmessage|primary  sends {"panic":…} to the primary, whose
//	        OnMessage panics, or makes its App.Primary panic
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/handoff-dev/handoff/runtime"
)

var (
	version = "v1"
	mode    = "ok"
)

type msg struct {
	Tick    *int   `json:"tick,omitempty"`
	Direct  *int   `json:"direct,omitempty"`
	Slot    int    `json:"slot"`
	Ask     string `json:"ask,omitempty"`
	Answer  string `json:"answer,omitempty"`
	Primary int    `json:"primary,omitempty"`
	Pid     int    `json:"pid,omitempty"`
	Panic   string `json:"panic,omitempty"`
}

// options are libapp's flags.
type options struct {
	listen    string
	workers   int
	pidFile   string
	logFormat string
	tick      time.Duration
}

func main() {
	if mode == "crash" && os.Getenv("HANDOFF_WORKER") != "" {
		fmt.Fprintln(os.Stderr, "libapp: crashing at start (mode=crash)")
		os.Exit(3)
	}
	o := parseFlags()
	l, err := runtime.ParseListen(o.listen, 0)
	if err != nil {
		fmt.Fprintln(os.Stderr, "libapp:", err)
		os.Exit(2)
	}
	log := newLogger(o.logFormat)
	p := &primaryApp{log: log, tick: o.tick, workers: o.workers, panicPrimary: make(chan struct{}, 1)}

	err = runtime.Main(context.Background(), runtime.App{
		Config: runtime.Config{
			Listeners: []runtime.Listener{l},
			Workers:   o.workers,
			PIDFile:   o.pidFile,
			Logger:    log,
		},
		// Closures of main, not method values: the stack of a panic in
		// them names main.main (the library test looks for it).
		Primary:   func(ctx context.Context, h *runtime.Hub) { p.run(ctx, h) },
		OnMessage: func(m runtime.Message) { p.onMessage(m) },
		Worker:    worker,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "libapp:", err)
		os.Exit(1)
	}
}

// parseFlags parses the command line into options (usage errors exit 2).
func parseFlags() options {
	var o options
	flag.StringVar(&o.listen, "listen", "127.0.0.1:8080", "")
	flag.IntVar(&o.workers, "workers", 2, "")
	flag.StringVar(&o.pidFile, "pid-file", "", "")
	flag.StringVar(&o.logFormat, "log-format", "json", "")
	flag.DurationVar(&o.tick, "tick", 20*time.Millisecond, "")
	flag.Parse()
	return o
}

// newLogger logs to stderr as JSON, or for a person with "console".
func newLogger(format string) *zap.Logger {
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	if format == "console" {
		enc = zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig())
	}
	return zap.New(zapcore.NewCore(enc, zapcore.Lock(os.Stderr), zap.InfoLevel))
}

// primaryApp is what libapp does in its primary: App.Primary (run) and
// App.OnMessage (onMessage).
type primaryApp struct {
	log          *zap.Logger
	tick         time.Duration
	workers      int
	panicPrimary chan struct{} // {"panic":"primary"} asks run to panic
}

// run broadcasts {"tick":n} and sends each slot {"direct":n,"slot":i}
// every tick, until ctx ends.
func (p *primaryApp) run(ctx context.Context, h *runtime.Hub) {
	p.log.Info("app primary started", zap.Int("primary", os.Getpid()))
	defer p.log.Info("app primary ended", zap.Int("primary", os.Getpid()))
	t := time.NewTicker(p.tick)
	defer t.Stop()
	for n := 1; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-p.panicPrimary:
			panic("libapp: asked to panic in App.Primary")
		case <-t.C:
		}
		h.Broadcast(msg{Tick: &n})
		for i := 0; i < p.workers; i++ {
			h.Send(i, msg{Direct: &n, Slot: i})
		}
	}
}

// onMessage answers {"ask":id}, and panics (or has run panic) on
// {"panic":…}.
func (p *primaryApp) onMessage(m runtime.Message) {
	var in msg
	if err := m.Decode(&in); err == nil && in.Panic != "" {
		if in.Panic == "primary" {
			select {
			case p.panicPrimary <- struct{}{}:
			default:
			}
			return
		}
		panic("libapp: asked to panic in OnMessage")
	}
	if err := m.Decode(&in); err != nil || in.Ask == "" {
		p.log.Warn("unexpected message", zap.ByteString("data", m.Data))
		return
	}
	m.Reply(msg{Answer: in.Ask, Primary: os.Getpid(), Slot: m.Slot, Pid: m.Pid})
}

// worker serves HTTP in a worker: /ask, /panic, /stats and the rest (/).
func worker(ctx context.Context, w *runtime.Worker) error {
	wk := &workerApp{w: w, waiting: map[string]chan msg{}}
	w.OnMessage(wk.onMessage)
	mux := http.NewServeMux()
	mux.HandleFunc("/ask", wk.ask)
	mux.HandleFunc("/panic", wk.sendPanic)
	mux.HandleFunc("/stats", wk.stats)
	mux.HandleFunc("/", wk.root)
	w.Notify("STATUS=libapp " + version + " serving")
	return w.Serve(&http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}, nil)
}

// workerApp is a worker's side: the messages it counted and the asks
// waiting for their answer.
type workerApp struct {
	w                          *runtime.Worker
	ticks, directs, mismatches atomic.Int64
	seq                        atomic.Int64 // numbers the asks
	mu                         sync.Mutex
	waiting                    map[string]chan msg
}

// onMessage counts ticks and directs (a direct for another slot is a
// mismatch, as is an answer naming another worker) and hands each answer
// to the ask waiting for it.
func (wk *workerApp) onMessage(data json.RawMessage) {
	var m msg
	if json.Unmarshal(data, &m) != nil {
		wk.mismatches.Add(1)
		return
	}
	switch {
	case m.Tick != nil:
		wk.ticks.Add(1)
	case m.Direct != nil:
		if m.Slot == wk.w.Slot() {
			wk.directs.Add(1)
		} else {
			wk.mismatches.Add(1)
		}
	case m.Answer != "":
		if m.Pid != os.Getpid() || m.Slot != wk.w.Slot() {
			wk.mismatches.Add(1)
		}
		wk.mu.Lock()
		ch := wk.waiting[m.Answer]
		delete(wk.waiting, m.Answer)
		wk.mu.Unlock()
		if ch != nil {
			ch <- m
		}
	}
}

// ask sends {"ask":id} to the primary and answers with its answer (500
// without one in 5s).
func (wk *workerApp) ask(rw http.ResponseWriter, r *http.Request) {
	id := strconv.Itoa(os.Getpid()) + "-" + strconv.FormatInt(wk.seq.Add(1), 10)
	ch := make(chan msg, 1)
	wk.mu.Lock()
	wk.waiting[id] = ch
	wk.mu.Unlock()
	if err := wk.w.Send(msg{Ask: id}); err != nil {
		http.Error(rw, "send: "+err.Error(), 500)
		return
	}
	select {
	case m := <-ch:
		fmt.Fprintf(rw, "answer primary=%d to=%d slot=%d\n", m.Primary, m.Pid, m.Slot)
	case <-time.After(5 * time.Second):
		http.Error(rw, "no answer from the primary", 500)
	}
}

// sendPanic (/panic?in=…) sends {"panic":…} to the primary.
func (wk *workerApp) sendPanic(rw http.ResponseWriter, r *http.Request) {
	if err := wk.w.Send(msg{Panic: r.URL.Query().Get("in")}); err != nil {
		http.Error(rw, "send: "+err.Error(), 500)
		return
	}
	fmt.Fprintf(rw, "sent pid=%d\n", os.Getpid())
}

// stats answers the counts of messages received.
func (wk *workerApp) stats(rw http.ResponseWriter, r *http.Request) {
	fmt.Fprintf(rw, "ticks=%d directs=%d mismatches=%d pid=%d\n", wk.ticks.Load(), wk.directs.Load(), wk.mismatches.Load(), os.Getpid())
}

// root answers the version, pid, slot and generation.
func (wk *workerApp) root(rw http.ResponseWriter, r *http.Request) {
	fmt.Fprintf(rw, "%s pid=%d worker=%d gen=%d\n", version, os.Getpid(), wk.w.Slot(), wk.w.Generation())
}
