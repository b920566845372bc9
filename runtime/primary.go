//go:build linux

package runtime

import (
	"context"
	"errors"
	"syscall"

	"github.com/cloudflare/tableflip"
	"go.uber.org/zap"

	"github.com/handoff-dev/handoff/internal/control"
	"github.com/handoff-dev/handoff/internal/metrics"
	"github.com/handoff-dev/handoff/internal/sockets"
	"github.com/handoff-dev/handoff/workerpool"
)

type primary struct {
	cfg Config
	// probes are the workers' last HTTP probes (--ready http:, --health).
	probes probeBook
	log    *zap.Logger
	upg    *tableflip.Upgrader
	pool   *workerpool.Pool
	dir    string
	gen    int // the last generation handed out; only the deploying goroutine changes it
	selfID fileID
	env    []string
	// successor is the primary that took over, once one has.
	successor *process
	// sockets are the workers' steered sockets (nil: every listener is
	// one shared socket); balance says how connections are spread.
	sockets *sockets.Layer
	balance balanceInfo
	// sockFiles are the unix socket files of the worker listeners.
	sockFiles []string
	// owner is set once this primary owns the listeners: at once for the
	// first primary, after the hand-over for a new one.
	owner bool
	// reqs carries jobs asked for by other parts of the primary (see ask);
	// closed is closed when Run returns, after which nothing reads reqs.
	reqs   chan request
	closed chan struct{}
	// askShutdown ends Run's context: a graceful shutdown asked for on
	// the control socket.
	askShutdown context.CancelCauseFunc
	ctl         *control.Server
	// cur is the generation of the last start or deploy that finished
	// (what new slots run), prev the one before it (what a rollback
	// deploys). Only the loop's jobs (and the start or take-over before
	// it) use them.
	cur, prev *generation
	// pins are the pinned files the primary holds open (see
	// releasePins).
	pins pinHold
	// gens is what status and rollback know of the generations kept.
	gens generations
	// pinStore exports the generations' pins to tableflip (exportOnce).
	pinStore *exportOnce

	// book is what status reports that changes while the primary runs.
	book statusBook
	// addrs are the listeners' bound addresses, set once they are bound.
	addrs []string
	// metrics and web are nil without --metrics.
	metrics *metrics.Set
	web     *metrics.Server
	// binds: PORT and bind adoption (adopt.go).
	binds bindState
}

// ask hands r to the primary's loop. If the primary has stopped, r is
// answered with ErrShuttingDown.
func (p *primary) ask(r request) {
	select {
	case p.reqs <- r:
	case <-p.closed:
		if r.done != nil {
			r.done <- ErrShuttingDown
		}
	}
}

// errHandedOver ends a deploy after which another primary owns the
// listeners.
var errHandedOver = errors.New("handed over to a new primary")

type fileID struct{ dev, ino uint64 }

func statID(path string) (fileID, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return fileID{}, err
	}
	return fileID{uint64(st.Dev), st.Ino}, nil
}
