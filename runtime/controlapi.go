package runtime

import (
	"errors"

	"github.com/handoff-dev/handoff/internal/control"
)

// The primary's status, the answer to `handoff status` on its control
// socket: what `handoff status --json` prints (the types are those the
// control plane carries, internal/control's; field names are a contract).
type (
	// Status is what `handoff status --json` prints.
	Status = control.Status
	// GenerationsStatus is what the workers run now, and what `handoff
	// rollback` would deploy.
	GenerationsStatus = control.GenerationsStatus
	// GenerationStatus is one generation and the executable it runs.
	GenerationStatus = control.GenerationStatus
	// PinnedFile is a file pinned beside a generation's command: a
	// script's interpreter.
	PinnedFile = control.PinnedFile
	// PrimaryStatus describes the primary that answered.
	PrimaryStatus = control.PrimaryStatus
	// WorkerStatus is one live worker process, draining ones included.
	WorkerStatus = control.WorkerStatus
	// ProbeStatus is one HTTP probe of a worker, through its own socket.
	ProbeStatus = control.ProbeStatus
	// UpgradeStatus is a deploy in progress.
	UpgradeStatus = control.UpgradeStatus
)

// ErrShuttingDown is the outcome of a request that the primary dropped
// because it is shutting down.
var ErrShuttingDown = errors.New("the primary is shutting down")
