//go:build linux

package runtime

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/handoff-dev/handoff/internal/drain"
	"github.com/handoff-dev/handoff/internal/sockets"
	"github.com/handoff-dev/handoff/internal/steer"
	"github.com/handoff-dev/handoff/workerpool"
)

// metrics are the primary's Prometheus collectors, in a registry of its
// own. Counters count what this primary saw: after a self-upgrade the new
// primary starts them from zero, which Prometheus's rate() reads as a
// counter reset.
type metrics struct {
	reg *prometheus.Registry

	starts       prometheus.Counter
	restarts     prometheus.Counter
	exits        *prometheus.CounterVec
	readySeconds prometheus.Histogram
	upgrades     *prometheus.CounterVec
	upgradeSecs  *prometheus.HistogramVec
	recycles     *prometheus.CounterVec
	probes       *prometheus.CounterVec
	lastUpgrade  prometheus.Gauge
	generation   prometheus.Gauge
}

// upgrade kinds and outcomes, as labels.
const (
	kindWorkers  = "workers"
	kindPrimary  = "primary"
	kindRollback = "rollback" // handoff rollback
	outcomeDone  = "done"
	// outcomeAborted: nothing was replaced; the old workers serve.
	outcomeAborted = "aborted"
	// outcomeRolledBack: the deploy failed after replacing workers, which
	// were rolled back to the generation before it.
	outcomeRolledBack = "rolled_back"
	metricNamespace   = "handoff"
)

func newMetrics() *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	m.starts = prometheus.NewCounter(prometheus.CounterOpts{Namespace: metricNamespace,
		Name: "worker_starts_total", Help: "Worker processes started (first start, deploys, restarts, replacements)."})
	m.restarts = prometheus.NewCounter(prometheus.CounterOpts{Namespace: metricNamespace,
		Name: "worker_restarts_total", Help: "Workers restarted after they exited unexpectedly."})
	m.exits = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metricNamespace,
		Name: "worker_exits_total",
		Help: "Worker processes reaped, by cause: crashed (exited unasked), retired (exited after the stop signal), killed (SIGKILL: no drain in time, or hung)."},
		[]string{"cause"})
	m.readySeconds = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: metricNamespace,
		Name: "worker_ready_seconds", Help: "Time from a worker's start until it was ready.",
		Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}})
	m.upgrades = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metricNamespace,
		Name: "upgrades_total", Help: "Deploys, by kind (workers: the workers were rolled; primary: the primary upgraded itself; rollback: handoff rollback) and outcome (done; aborted: nothing replaced; rolled_back: failed after replacing workers, which went back to the previous generation)."},
		[]string{"kind", "outcome"})
	m.upgradeSecs = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: metricNamespace,
		Name: "upgrade_duration_seconds", Help: "Duration of deploys, by kind and outcome.",
		Buckets: []float64{.1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300}},
		[]string{"kind", "outcome"})
	m.recycles = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metricNamespace,
		Name: "worker_recycles_total", Help: "Workers replaced one at a time because of --max-memory (memory), --watchdog (watchdog) or --health (health)."},
		[]string{"reason"})
	m.probes = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metricNamespace,
		Name: "probes_total", Help: "HTTP probes sent through a worker's own socket, by kind (ready: --ready http:, health: --health) and result (ok: 2xx; fail)."},
		[]string{"kind", "result"})
	m.lastUpgrade = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: metricNamespace,
		Name: "last_upgrade_successful", Help: "1 if the last deploy this primary ran (or took over by) finished, 0 if it was aborted or rolled back."})
	m.generation = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: metricNamespace,
		Name: "generation", Help: "The generation (deploy count) the workers run: the last one that finished."})
	m.lastUpgrade.Set(1)
	for _, c := range []string{workerpool.ExitCrashed, workerpool.ExitRetired, workerpool.ExitKilled} {
		m.exits.WithLabelValues(c)
	}
	for _, k := range []string{kindWorkers, kindPrimary, kindRollback} {
		for _, o := range []string{outcomeDone, outcomeAborted, outcomeRolledBack} {
			m.upgrades.WithLabelValues(k, o)
		}
	}
	for _, r := range []string{recycleMemory, recycleWatchdog, recycleHealth} {
		m.recycles.WithLabelValues(r)
	}
	m.reg.MustRegister(m.starts, m.restarts, m.exits, m.readySeconds, m.upgrades, m.upgradeSecs, m.recycles, m.probes,
		m.lastUpgrade, m.generation,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// collect adds what is read from pool at scrape time; balance is the
// balance mode's name, probes the workers' last HTTP probes.
func (m *metrics) collect(pool *workerpool.Pool, balance string, probes *probeBook) {
	m.reg.MustRegister(poolCollector{pool: pool, balance: balance, probes: probes})
}

// probed counts one HTTP probe of kind.
func (m *metrics) probed(kind string, ok bool) {
	if m != nil {
		result := "fail"
		if ok {
			result = "ok"
		}
		m.probes.WithLabelValues(kind, result).Inc()
	}
}

// The workerpool.Observer side.
func (m *metrics) WorkerStarted(int) { m.starts.Inc() }
func (m *metrics) WorkerReady(_ int, took time.Duration) {
	m.readySeconds.Observe(took.Seconds())
}
func (m *metrics) WorkerRestarted(int)              { m.restarts.Inc() }
func (m *metrics) WorkerExited(_ int, cause string) { m.exits.WithLabelValues(cause).Inc() }

// deployed records one deploy and its outcome; serving is the generation
// the workers run after it.
func (m *metrics) deployed(kind, outcome string, took time.Duration, serving int) {
	if m == nil {
		return
	}
	if outcome == outcomeDone {
		m.lastUpgrade.Set(1)
	} else {
		m.lastUpgrade.Set(0)
	}
	m.generation.Set(float64(serving))
	m.upgrades.WithLabelValues(kind, outcome).Inc()
	m.upgradeSecs.WithLabelValues(kind, outcome).Observe(took.Seconds())
}

func (m *metrics) recycled(reason string) {
	if m != nil {
		m.recycles.WithLabelValues(reason).Inc()
	}
}

func (m *metrics) setGeneration(gen int) {
	if m != nil {
		m.generation.Set(float64(gen))
	}
}

// poolCollector reads the pool at scrape time: workers by state, the
// desired count, each slot's resident memory, and with a socket per
// worker, each slot's accept queue and the connections steered to it.
type poolCollector struct {
	pool    *workerpool.Pool
	balance string
	probes  *probeBook
}

var (
	workersDesc = prometheus.NewDesc("handoff_workers",
		"Live worker processes by state: starting (not ready yet), ready, draining (retiring).", []string{"state"}, nil)
	desiredDesc = prometheus.NewDesc("handoff_workers_desired",
		"Worker slots: how many ready workers the primary keeps.", nil, nil)
	readySlotsDesc = prometheus.NewDesc("handoff_workers_ready_slots",
		"Slots served by a ready worker that is not draining; /readyz answers 200 when it equals handoff_workers_desired.", nil, nil)
	rssDesc = prometheus.NewDesc("handoff_worker_resident_memory_bytes",
		"Resident set size of each slot's current worker process (VmRSS; not its children).", []string{"slot"}, nil)
	balanceDesc = prometheus.NewDesc("handoff_balance_mode",
		"1 for the way new connections are spread over the workers: round-robin or random (a socket per worker, steered by the primary), shared (one socket every worker accepts from).", []string{"mode"}, nil)
	queueDesc = prometheus.NewDesc("handoff_worker_accept_queue",
		"Connections waiting in the accept queue of each slot's own socket(s); absent in shared mode.", []string{"slot"}, nil)
	probeOKDesc = prometheus.NewDesc("handoff_worker_last_probe_ok",
		"1 if each slot's worker passed its last HTTP probe (kind: ready or health), 0 if it failed; only with --ready http: or --health.", []string{"slot", "kind"}, nil)
	probeAtDesc = prometheus.NewDesc("handoff_worker_last_probe_timestamp_seconds",
		"When each slot's worker was last probed (Unix time); only with --ready http: or --health.", []string{"slot", "kind"}, nil)
	givenDesc = prometheus.NewDesc("handoff_worker_connections_given_total",
		"Connections the round-robin program steered to each slot's socket(s) since the slot's socket was made; round-robin mode only.", []string{"slot"}, nil)
)

func (c poolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- workersDesc
	ch <- desiredDesc
	ch <- readySlotsDesc
	ch <- rssDesc
	ch <- balanceDesc
	ch <- queueDesc
	ch <- probeOKDesc
	ch <- probeAtDesc
	ch <- givenDesc
}

func (c poolCollector) Collect(ch chan<- prometheus.Metric) {
	counts := map[string]int{"starting": 0, "ready": 0, "draining": 0}
	for _, w := range c.pool.Workers() {
		counts[w.State()]++
		if !w.Current || w.Draining {
			continue
		}
		slot := strconv.Itoa(w.Slot)
		if rss, err := workerpool.RSS(w.Pid); err == nil {
			ch <- prometheus.MustNewConstMetric(rssDesc, prometheus.GaugeValue, float64(rss), slot)
		}
		if pr := c.probes.get(w.Pid); pr != nil {
			ok := 0.0
			if pr.OK {
				ok = 1
			}
			ch <- prometheus.MustNewConstMetric(probeOKDesc, prometheus.GaugeValue, ok, slot, pr.Kind)
			ch <- prometheus.MustNewConstMetric(probeAtDesc, prometheus.GaugeValue, float64(pr.At.UnixNano())/1e9, slot, pr.Kind)
		}
		if s, ok := w.Socks.(*sockets.Set); ok {
			queue, given := s.Queue()
			ch <- prometheus.MustNewConstMetric(queueDesc, prometheus.GaugeValue, float64(queue), slot)
			if c.balance == steer.RoundRobin.String() {
				ch <- prometheus.MustNewConstMetric(givenDesc, prometheus.CounterValue, float64(given), slot)
			}
		}
	}
	ch <- prometheus.MustNewConstMetric(balanceDesc, prometheus.GaugeValue, 1, c.balance)
	for state, n := range counts {
		ch <- prometheus.MustNewConstMetric(workersDesc, prometheus.GaugeValue, float64(n), state)
	}
	ready, size := c.pool.ReadySlots()
	ch <- prometheus.MustNewConstMetric(desiredDesc, prometheus.GaugeValue, float64(size))
	ch <- prometheus.MustNewConstMetric(readySlotsDesc, prometheus.GaugeValue, float64(ready))
}

// metricsServer serves /metrics, /healthz and /readyz on the --metrics
// listener.
type metricsServer struct {
	m    *metrics
	pool *workerpool.Pool
	// stopping is set once the primary shuts down: /readyz answers 503
	// while the workers drain.
	stopping atomic.Bool
	cancel   context.CancelFunc
	done     chan struct{}
}

func (s *metricsServer) handler() http.Handler {
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

// serve answers on ln until close; a scrape under way when it stops gets
// its answer (internal/drain).
func (s *metricsServer) serve(ln net.Listener, log *zap.Logger) {
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel, s.done = cancel, make(chan struct{})
	srv := &http.Server{Handler: s.handler(), ReadHeaderTimeout: 10 * time.Second, ErrorLog: zap.NewStdLog(log)}
	go func() {
		defer close(s.done)
		if err := drain.Serve(ctx, srv, ln, 5*time.Second); err != nil {
			log.Warn("metrics server", zap.Error(err))
		}
	}()
}

// close stops serving and waits until the server is gone. It does nothing
// if serve was never called.
func (s *metricsServer) close() {
	if s == nil || s.cancel == nil {
		return
	}
	s.cancel()
	<-s.done
}
