//go:build linux

package runtime

import (
	"context"
	"os"
	"syscall"

	"go.uber.org/zap"
)

// underSignals runs fn while acting on signals and requests, for the
// phases before the deploy loop runs (start-up, a new primary's take-over):
// a HUP or a request is queued for the loop, a TERM or INT cancels fn's
// context and is returned as shutdownSig, as is the end of ctx (as TERM).
func (p *primary) underSignals(ctx context.Context, sigs <-chan os.Signal, phase string, fn func(context.Context) error) (queue jobQueue, shutdownSig os.Signal, err error) {
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// A new primary's probation ends when a deploy is asked for.
	n := newNewer()
	fctx = withNewer(fctx, n)
	done := make(chan error, 1)
	go func() { done <- fn(fctx) }()
	add := func(r request) {
		if r.isDeploy() {
			n.close()
		}
		if !queue.add(r) || r.run != nil {
			return
		}
		p.log.Info("upgrade queued", zap.String("why", phase))
	}
	ctxDone := ctx.Done()
	for {
		select {
		case <-ctxDone:
			ctxDone = nil
			if shutdownSig == nil {
				p.log.Info("shutdown started", zap.String("why", context.Cause(ctx).Error()))
				shutdownSig = syscall.SIGTERM
			}
		case err := <-done:
			if shutdownSig == nil && ctx.Err() != nil {
				shutdownSig = syscall.SIGTERM
			}
			if shutdownSig != nil {
				queue.finish(ErrShuttingDown)
			}
			return queue, shutdownSig, err
		case r := <-p.reqs:
			add(r)
		case sig := <-sigs:
			if r, ok := signalRequest(sig, p.scaleBy); ok {
				add(r)
				continue
			}
			if shutdownSig == nil {
				p.log.Info("shutdown started", zap.String("signal", sig.String()))
				shutdownSig = sig
				cancel()
			}
		}
	}
}

// signalRequest turns a signal into a request: HUP is a deploy, TTIN and
// TTOU a job of scale(+1) and scale(-1). ok is false for the signals that
// stop the primary.
func signalRequest(sig os.Signal, scale func(delta int) func(context.Context) error) (r request, ok bool) {
	switch sig {
	case syscall.SIGHUP:
		return request{op: "deploy", sig: syscall.SIGHUP}, true
	case syscall.SIGTTIN:
		return request{op: "scale", run: scale(+1), sig: syscall.SIGTTIN}, true
	case syscall.SIGTTOU:
		return request{op: "scale", run: scale(-1), sig: syscall.SIGTTOU}, true
	}
	return request{}, false
}
