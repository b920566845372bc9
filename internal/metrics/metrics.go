package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/handoff-dev/handoff/workerpool"
)

// Deploy kinds and outcomes: the labels of handoff_upgrades_total and
// handoff_upgrade_duration_seconds.
const (
	KindWorkers  = "workers"
	KindPrimary  = "primary"
	KindRollback = "rollback" // handoff rollback
	OutcomeDone  = "done"
	// OutcomeAborted: nothing was replaced; the old workers serve.
	OutcomeAborted = "aborted"
	// OutcomeRolledBack: the deploy failed after replacing workers, which
	// were rolled back to the generation before it.
	OutcomeRolledBack = "rolled_back"
)

// Why a worker is recycled: the reason label of
// handoff_worker_recycles_total.
const (
	RecycleMemory   = "memory"
	RecycleWatchdog = "watchdog"
	RecycleHealth   = "health"
)

const namespace = "handoff"

// Set is the primary's Prometheus collectors, in a registry of its own.
// Counters count what this primary saw: after a self-upgrade the new
// primary starts them from zero, which Prometheus's rate() reads as a
// counter reset.
//
// A nil *Set records nothing (a primary without --metrics): Deployed,
// Recycled, Probed and SetGeneration may be called on it.
type Set struct {
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

// New returns a Set with the primary's own Go runtime and process
// metrics registered, and every exit cause, deploy kind and outcome and
// recycle reason at 0.
func New() *Set {
	m := &Set{reg: prometheus.NewRegistry()}
	m.starts = prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace,
		Name: "worker_starts_total", Help: "Worker processes started (first start, deploys, restarts, replacements)."})
	m.restarts = prometheus.NewCounter(prometheus.CounterOpts{Namespace: namespace,
		Name: "worker_restarts_total", Help: "Workers restarted after they exited unexpectedly."})
	m.exits = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace,
		Name: "worker_exits_total",
		Help: "Worker processes reaped, by cause: crashed (exited unasked), retired (exited after the stop signal), killed (SIGKILL: no drain in time, or hung)."},
		[]string{"cause"})
	m.readySeconds = prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: namespace,
		Name: "worker_ready_seconds", Help: "Time from a worker's start until it was ready.",
		Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}})
	m.upgrades = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace,
		Name: "upgrades_total", Help: "Deploys, by kind (workers: the workers were rolled; primary: the primary upgraded itself; rollback: handoff rollback) and outcome (done; aborted: nothing replaced; rolled_back: failed after replacing workers, which went back to the previous generation)."},
		[]string{"kind", "outcome"})
	m.upgradeSecs = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: namespace,
		Name: "upgrade_duration_seconds", Help: "Duration of deploys, by kind and outcome.",
		Buckets: []float64{.1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300}},
		[]string{"kind", "outcome"})
	m.recycles = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace,
		Name: "worker_recycles_total", Help: "Workers replaced one at a time because of --max-memory (memory), --watchdog (watchdog) or --health (health)."},
		[]string{"reason"})
	m.probes = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace,
		Name: "probes_total", Help: "HTTP probes sent through a worker's own socket, by kind (ready: --ready http:, health: --health) and result (ok: 2xx; fail)."},
		[]string{"kind", "result"})
	m.lastUpgrade = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace,
		Name: "last_upgrade_successful", Help: "1 if the last deploy this primary ran (or took over by) finished, 0 if it was aborted or rolled back."})
	m.generation = prometheus.NewGauge(prometheus.GaugeOpts{Namespace: namespace,
		Name: "generation", Help: "The generation (deploy count) the workers run: the last one that finished."})
	m.lastUpgrade.Set(1)
	for _, c := range []string{workerpool.ExitCrashed, workerpool.ExitRetired, workerpool.ExitKilled} {
		m.exits.WithLabelValues(c)
	}
	for _, k := range []string{KindWorkers, KindPrimary, KindRollback} {
		for _, o := range []string{OutcomeDone, OutcomeAborted, OutcomeRolledBack} {
			m.upgrades.WithLabelValues(k, o)
		}
	}
	for _, r := range []string{RecycleMemory, RecycleWatchdog, RecycleHealth} {
		m.recycles.WithLabelValues(r)
	}
	m.reg.MustRegister(m.starts, m.restarts, m.exits, m.readySeconds, m.upgrades, m.upgradeSecs, m.recycles, m.probes,
		m.lastUpgrade, m.generation,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Probed counts one HTTP probe of kind ("ready" or "health").
func (m *Set) Probed(kind string, ok bool) {
	if m != nil {
		result := "fail"
		if ok {
			result = "ok"
		}
		m.probes.WithLabelValues(kind, result).Inc()
	}
}

// The workerpool.Observer side.
var _ workerpool.Observer = (*Set)(nil)

// WorkerStarted counts a worker forked.
func (m *Set) WorkerStarted(int) { m.starts.Inc() }

// WorkerReady observes how long a worker took to be ready.
func (m *Set) WorkerReady(_ int, took time.Duration) {
	m.readySeconds.Observe(took.Seconds())
}

// WorkerRestarted counts a crash restart.
func (m *Set) WorkerRestarted(int) { m.restarts.Inc() }

// WorkerExited counts a worker reaped, by cause (workerpool.Exit*).
func (m *Set) WorkerExited(_ int, cause string) { m.exits.WithLabelValues(cause).Inc() }

// Deployed records one deploy of kind (Kind*) and its outcome (Outcome*);
// serving is the generation the workers run after it.
func (m *Set) Deployed(kind, outcome string, took time.Duration, serving int) {
	if m == nil {
		return
	}
	if outcome == OutcomeDone {
		m.lastUpgrade.Set(1)
	} else {
		m.lastUpgrade.Set(0)
	}
	m.generation.Set(float64(serving))
	m.upgrades.WithLabelValues(kind, outcome).Inc()
	m.upgradeSecs.WithLabelValues(kind, outcome).Observe(took.Seconds())
}

// Recycled counts a worker replaced for reason (Recycle*).
func (m *Set) Recycled(reason string) {
	if m != nil {
		m.recycles.WithLabelValues(reason).Inc()
	}
}

// SetGeneration sets the generation the workers run (the first start's).
func (m *Set) SetGeneration(gen int) {
	if m != nil {
		m.generation.Set(float64(gen))
	}
}
