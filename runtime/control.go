//go:build linux

package runtime

import (
	"context"
	"errors"
	"fmt"

	"github.com/handoff-dev/handoff/internal/control"
)

// The primary's side of its control socket: internal/control serves the
// socket and calls controlHandler, which hands each request to the
// primary's loop and turns the outcome into the reply.

// listenControl opens the control socket (inherited from the previous
// primary on an upgrade, through tableflip's files), at cfg.Control or the
// default path for the first listener's bound address. It does not accept
// yet (see control.Server.Serve).
func (p *primary) listenControl(network, addr string) (*control.Server, error) {
	path, isDefault := p.cfg.Control, false
	if path == "" {
		path, isDefault = control.DefaultPath(network, addr), true
	}
	return control.Listen(control.Config{Path: path, Default: isDefault, Fds: p.upg.Fds, Inherited: p.upg.HasParent(),
		Handler: controlHandler{p}, Log: p.log})
}

// closeControl closes the control server, last (see resources.close). The
// lock file goes with the socket file: when tableflip removed that (a
// primary stopping without a successor; not a new primary that never
// took over, whose old primary holds on).
func (p *primary) closeControl() {
	if p.ctl == nil {
		return
	}
	p.ctl.Close(p.successor == nil && (p.owner || !p.upg.HasParent()))
}

// controlHandler answers the control socket's requests (control.Handler).
type controlHandler struct{ p *primary }

func (h controlHandler) Status() control.Status { return h.p.status() }

func (h controlHandler) Reload(ctx context.Context) control.Reply {
	r, done := deployRequest()
	err, retry := h.await(ctx, r, done)
	if retry {
		return retryReply
	}
	return h.deployReply(err)
}

func (h controlHandler) Scale(ctx context.Context, workers, delta int) control.Reply {
	done := make(chan error, 1)
	var to int
	run := h.p.scaleJob(workers, delta, &to)
	err, retry := h.await(ctx, request{op: "scale", run: run, done: done}, done)
	if retry {
		return retryReply
	}
	if err != nil {
		return control.Reply{Error: "scale aborted: " + failureLine(err) + h.p.bindAdvice(err)}
	}
	return control.Reply{OK: true, Workers: to, Message: fmt.Sprintf("%d workers", to)}
}

func (h controlHandler) Stop() {
	h.p.askShutdown(errors.New("stop asked for on the control socket"))
}

// retryReply answers a request that was pending when the primary handed
// over: the server tells the client to ask the new primary.
var retryReply = control.Reply{Retry: true}

// await hands r to the primary's loop and waits for done. retry is true
// when the primary handed over meanwhile: the new primary is the one to
// ask. The end of ctx (the control server closing) is ErrShuttingDown.
func (h controlHandler) await(ctx context.Context, r request, done <-chan error) (err error, retry bool) {
	go h.p.ask(r)
	select {
	case err := <-done:
		return err, errors.Is(err, errHandedOver)
	case <-ctx.Done():
		return ErrShuttingDown, false
	}
}

// deployReply answers a reload or a rollback with the outcome of its job.
func (h controlHandler) deployReply(err error) control.Reply {
	var rb *rolledBack
	switch {
	case errors.As(err, &rb):
		return control.Reply{Error: rb.Error()}
	case err != nil:
		return control.Reply{Error: "aborted: " + failureLine(err) + h.p.bindAdvice(err)}
	}
	gen := h.p.book.servingGen()
	return control.Reply{OK: true, Generation: gen, Message: fmt.Sprintf("done: generation %d serving", gen)}
}

// Rollback answers a rollback request once its job has run: done, with the
// generation serving; refused (nothing to roll back to); or aborted, with
// the reason.
func (h controlHandler) Rollback(ctx context.Context) control.Reply {
	done := make(chan error, 1)
	err, retry := h.await(ctx, request{op: opRollback, run: h.p.rollbackJob(), done: done}, done)
	switch {
	case retry:
		return retryReply
	case errors.Is(err, errNoPrevious), errors.Is(err, errNotAsDeployed):
		return control.Reply{Error: "refused: " + err.Error()}
	}
	return h.deployReply(err)
}
