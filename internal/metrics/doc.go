// Package metrics is the primary's Prometheus room: the metrics a
// primary run with --metrics exposes, and the server of its --metrics
// socket (/metrics, /healthz, /readyz).
//
// It owns the metrics' contract — names, labels, help strings and label
// values (deploy kinds and outcomes, recycle reasons), which dashboards
// and tests outside the repository scrape — and a private
// prometheus.Registry per primary: a Set. The primary reports what
// happens (Set.Deployed, Set.Recycled, Set.Probed, Set.SetGeneration);
// the pool reports its workers' lifecycle through workerpool.Observer,
// which a Set is; what is read at scrape time (workers by state, ready
// slots, each slot's resident memory, accept queue, connections given and
// last probe) comes from a Pool and a LastProbe func (Set.Collect).
//
// It may import workerpool (what a worker looks like, its exit causes,
// its resident memory), internal/steer (the balance modes) and
// internal/drain (the server's drain); never runtime, which wires it.
package metrics
