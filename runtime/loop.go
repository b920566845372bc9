//go:build linux

package runtime

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"go.uber.org/zap"
)

// jobLoop is the primary's state machine once it serves: it takes
// requests from signals (HUP, TTIN, TTOU: see signalRequest, scale making
// the scaling jobs) and from reqs, and runs their jobs one at a
// time, never two at once, starting with queue. TERM or INT (or the end of
// ctx) cancels the running job, waits for it, answers every queued one
// with ErrShuttingDown and returns shutdown(). A deploy that ends in
// errHandedOver returns handedOver(pass), pass being the signals that
// asked for the jobs still queued (see passOn): another primary owns the
// listeners now, and every queued job is answered with errHandedOver.
func jobLoop(ctx context.Context, log *zap.Logger, sigs <-chan os.Signal, reqs <-chan request, queue jobQueue,
	deploy func(context.Context) error, scale func(delta int) func(context.Context) error,
	shutdown func() error, handedOver func(pass []os.Signal) error) error {
	l := &jobRunner{ctx: ctx, log: log, queue: queue, deploy: deploy, shutdown: shutdown,
		done: make(chan error, 1), cancel: func() {}}
	l.next()
	for {
		select {
		case sig := <-sigs:
			r, ok := signalRequest(sig, scale)
			if !ok {
				return l.shutDown(zap.String("signal", sig.String()))
			}
			l.add(r)
		case r := <-reqs:
			l.add(r)
		case err := <-l.done:
			if pass, handed := l.finished(err); handed {
				return handedOver(pass)
			}
		case <-ctx.Done():
			return l.shutDown(zap.String("why", context.Cause(ctx).Error()))
		}
	}
}

// jobRunner is jobLoop's state: the queue, and the job that runs, if one
// does.
type jobRunner struct {
	ctx      context.Context
	log      *zap.Logger
	queue    jobQueue
	deploy   func(context.Context) error
	shutdown func() error
	// done receives the outcome of the running job.
	done    chan error
	running *job
	// cancel cancels the running job's context.
	cancel context.CancelFunc
}

// next starts the first queued job unless one runs already.
func (l *jobRunner) next() {
	if l.running != nil || len(l.queue) == 0 {
		return
	}
	l.running = l.queue.take()
	run := l.running.run
	if run == nil {
		run = l.deploy
	}
	l.running.newer = newNewer()
	if l.queue.hasDeploy() {
		l.running.newer.close()
	}
	var jctx context.Context
	jctx, l.cancel = context.WithCancel(l.ctx)
	jctx = withNewer(jctx, l.running.newer)
	go func() { l.done <- run(jctx) }()
}

// add queues r and starts it if nothing runs; a deploy or a rollback
// asked for while a job runs ends that job's probation (see newerDeploy).
func (l *jobRunner) add(r request) {
	isNew := l.queue.add(r)
	if l.running != nil && isNew && r.run == nil {
		l.log.Info("upgrade queued", zap.String("why", "an upgrade is running"))
	}
	if l.running != nil && r.isDeploy() {
		l.running.newer.close()
	}
	l.next()
}

// finished answers those who wait for the running job, which ended in
// err, and starts the next one. If err is errHandedOver, it answers every
// queued job with errHandedOver instead of starting one, and returns the
// signals to pass on to the new primary and true.
func (l *jobRunner) finished(err error) ([]os.Signal, bool) {
	l.cancel()
	j := l.running
	l.running = nil
	if errors.Is(err, errHandedOver) {
		j.finish(nil)
		pass := l.queue.passOn()
		l.queue.finish(errHandedOver)
		return pass, true
	}
	j.finish(err)
	l.next()
	return nil, false
}

// shutDown cancels the running job and waits for it, answers every queued
// one with ErrShuttingDown, and returns shutdown().
func (l *jobRunner) shutDown(why zap.Field) error {
	l.log.Info("shutdown started", why)
	if l.running != nil {
		l.cancel()
		l.running.finish(<-l.done)
	}
	l.queue.finish(ErrShuttingDown)
	return l.shutdown()
}

// loop acts on signals and requests and runs their jobs one at a time; a
// deploy asked for while one runs is queued, and further ones fold into
// it (see jobLoop).
func (p *primary) loop(ctx context.Context, sigs <-chan os.Signal, queue jobQueue) error {
	wctx, cancelRecycling := context.WithCancel(ctx)
	recycleDone := make(chan struct{})
	defer func() { cancelRecycling(); <-recycleDone }()
	go func() {
		defer close(recycleDone)
		var wg sync.WaitGroup
		wg.Go(func() { p.watchHealth(wctx) })
		p.watchWorkers(wctx)
		wg.Wait()
	}()
	shutdown := func() error {
		cancelRecycling()
		if p.successor != nil {
			// The hand-over completed as the stop came (upgradeSelf
			// passes a stop on only while it waits): the new primary
			// owns the listeners and is the one to stop.
			p.log.Info("stopping the new primary", zap.Int("new_primary", p.successor.pid))
			p.successor.signal(syscall.SIGTERM)
			p.successor.release()
		}
		return p.shutdown()
	}
	return jobLoop(ctx, p.log, sigs, p.reqs, queue, p.deploy, p.scaleBy, shutdown, func(pass []os.Signal) error {
		cancelRecycling()
		return p.retireAfterHandOver(ctx, sigs, pass)
	})
}

func (p *primary) shutdown() error {
	notifySystemd("STOPPING=1")
	if p.web != nil {
		p.web.ShuttingDown()
	}
	p.pool.Shutdown()
	if p.cfg.PIDFile != "" && p.pidFileIsMine() {
		os.Remove(p.cfg.PIDFile)
	}
	p.log.Info("shutdown finished")
	return nil
}

// pidFileIsMine reports whether the pid file (if any) names this process.
func (p *primary) pidFileIsMine() bool {
	if p.cfg.PIDFile == "" {
		return true
	}
	b, err := os.ReadFile(p.cfg.PIDFile)
	return err == nil && strings.TrimSpace(string(b)) == strconv.Itoa(os.Getpid())
}
