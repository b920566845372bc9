package metrics

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/handoff-dev/handoff/internal/steer"
	"github.com/handoff-dev/handoff/workerpool"
)

// Pool is what the metrics read of the worker pool at scrape time (and
// /readyz on every request); *workerpool.Pool is one.
type Pool interface {
	Workers() []workerpool.WorkerInfo
	ReadySlots() (ready, size int)
}

// Queuer is a worker's Socks that know their accept queue: with a socket
// per worker, each slot's handoff_worker_accept_queue and, in round-robin
// mode, handoff_worker_connections_given_total.
type Queuer interface {
	// Queue is the number of connections waiting in the sockets' accept
	// queues, and given those the round-robin program gave them.
	Queue() (queue int, given uint64)
}

// Probe is a worker's last HTTP probe.
type Probe struct {
	// Kind is "ready" (--ready http:) or "health" (--health).
	Kind string
	// OK: the answer was 2xx.
	OK bool
	At time.Time
}

// LastProbe returns the last HTTP probe of the worker pid, if it was
// probed.
type LastProbe func(pid int) (Probe, bool)

// Collect adds what is read from pool at scrape time; balance is how new
// connections are spread, probes the workers' last HTTP probes (nil:
// none).
func (m *Set) Collect(pool Pool, balance steer.Mode, probes LastProbe) {
	m.reg.MustRegister(&poolCollector{pool: pool, balance: balance, probes: probes})
}

// poolCollector reads the pool at scrape time: workers by state, the
// desired count, each slot's resident memory, and with a socket per
// worker, each slot's accept queue and the connections steered to it.
type poolCollector struct {
	pool    Pool
	balance steer.Mode
	probes  LastProbe
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

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
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

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
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
		if c.probes != nil {
			if pr, ok := c.probes(w.Pid); ok {
				ok := 0.0
				if pr.OK {
					ok = 1
				}
				ch <- prometheus.MustNewConstMetric(probeOKDesc, prometheus.GaugeValue, ok, slot, pr.Kind)
				ch <- prometheus.MustNewConstMetric(probeAtDesc, prometheus.GaugeValue, float64(pr.At.UnixNano())/1e9, slot, pr.Kind)
			}
		}
		if s, ok := w.Socks.(Queuer); ok {
			queue, given := s.Queue()
			ch <- prometheus.MustNewConstMetric(queueDesc, prometheus.GaugeValue, float64(queue), slot)
			if c.balance == steer.RoundRobin {
				ch <- prometheus.MustNewConstMetric(givenDesc, prometheus.CounterValue, float64(given), slot)
			}
		}
	}
	ch <- prometheus.MustNewConstMetric(balanceDesc, prometheus.GaugeValue, 1, c.balance.String())
	for state, n := range counts {
		ch <- prometheus.MustNewConstMetric(workersDesc, prometheus.GaugeValue, float64(n), state)
	}
	ready, size := c.pool.ReadySlots()
	ch <- prometheus.MustNewConstMetric(desiredDesc, prometheus.GaugeValue, float64(size))
	ch <- prometheus.MustNewConstMetric(readySlotsDesc, prometheus.GaugeValue, float64(ready))
}
