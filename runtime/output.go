package runtime

import (
	"time"

	"github.com/handoff-dev/handoff/workerpool"
)

// OutputMode says how the workers' stdout and stderr reach the primary's
// (see Config.WorkerOutput).
type OutputMode = workerpool.OutputMode

const (
	// OutputPrefix writes each line with the worker's slot and pid in
	// front: "w0:4242| text" ("w0:4242+ " for the rest of a line cut at
	// 64 KiB).
	OutputPrefix = workerpool.OutputPrefix
	// OutputJSON writes each line as one JSON event ("worker output" with
	// slot, pid, generation, stream and line).
	OutputJSON = workerpool.OutputJSON
	// OutputRaw passes the workers' stdout through untouched (they
	// inherit it) and their stderr lines as they are.
	OutputRaw = workerpool.OutputRaw
)

// outputIdle bounds the wait, as Run returns, for the workers' last lines:
// it gives up once no line has moved for that long (a destination that
// blocks, a pipe held by a process a worker left behind).
const outputIdle = 2 * time.Second
