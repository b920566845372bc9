//go:build linux

package runtime

import (
	"github.com/handoff-dev/handoff/internal/metrics"
	"github.com/handoff-dev/handoff/internal/sockets"
)

// Deploy kinds and outcomes, as the metrics label them.
const (
	kindWorkers       = metrics.KindWorkers
	kindPrimary       = metrics.KindPrimary
	kindRollback      = metrics.KindRollback
	outcomeDone       = metrics.OutcomeDone
	outcomeAborted    = metrics.OutcomeAborted
	outcomeRolledBack = metrics.OutcomeRolledBack
)

// The metrics read each slot's accept queue from its worker's sockets.
var _ metrics.Queuer = (*sockets.Set)(nil)

// lastProbe is the metrics' view of b: the worker pid's last probe.
func (b *probeBook) lastProbe(pid int) (metrics.Probe, bool) {
	pr := b.get(pid)
	if pr == nil {
		return metrics.Probe{}, false
	}
	return metrics.Probe{Kind: pr.Kind, OK: pr.OK, At: pr.At}, true
}
