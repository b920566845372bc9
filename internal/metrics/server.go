package metrics

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/handoff-dev/handoff/internal/drain"
)

// Server serves /metrics, /healthz and /readyz on the --metrics
// listener.
type Server struct {
	m    *Set
	pool Pool
	// stopping is set once the primary shuts down: /readyz answers 503
	// while the workers drain.
	stopping atomic.Bool
	cancel   context.CancelFunc
	done     chan struct{}
}

// NewServer returns the server of m's metrics; /readyz answers 200 while
// every slot of pool is served by a ready worker.
func NewServer(m *Set, pool Pool) *Server {
	return &Server{m: m, pool: pool}
}

// ShuttingDown has /readyz answer 503 from now on: the primary shuts
// down and its workers drain.
func (s *Server) ShuttingDown() { s.stopping.Store(true) }

// Handler answers /metrics, /healthz and /readyz.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(s.m.reg, promhttp.HandlerOpts{Registry: s.m.reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		ready, size := s.pool.ReadySlots()
		switch {
		case s.stopping.Load():
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "shutting down: %d of %d workers ready\n", ready, size)
		case ready < size:
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "not ready: %d of %d workers ready\n", ready, size)
		default:
			fmt.Fprintf(w, "ready: %d of %d workers ready\n", ready, size)
		}
	})
	return mux
}

// Serve answers on ln until Close; a scrape under way when it stops gets
// its answer (internal/drain).
func (s *Server) Serve(ln net.Listener, log *zap.Logger) {
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel, s.done = cancel, make(chan struct{})
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second, ErrorLog: zap.NewStdLog(log)}
	go func() {
		defer close(s.done)
		if err := drain.Serve(ctx, srv, ln, 5*time.Second); err != nil {
			log.Warn("metrics server", zap.Error(err))
		}
	}()
}

// Close stops serving and waits until the server is gone. It does nothing
// on a nil Server or if Serve was never called.
func (s *Server) Close() {
	if s == nil || s.cancel == nil {
		return
	}
	s.cancel()
	<-s.done
}
