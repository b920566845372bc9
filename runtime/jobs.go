//go:build linux

package runtime

import (
	"context"
	"os"
	"sync"
	"syscall"
)

// request asks the primary's loop for one job. Jobs run one at a time, in
// the order asked for: a deploy (run == nil) folds into a deploy already
// queued, so a burst of HUPs, file changes or reload commands yields one
// deploy after the running one; any other job (run != nil: scaling,
// replacing a worker) runs on its own, in turn.
type request struct {
	// op names the job in logs: "deploy", "scale", ...
	op  string
	run func(context.Context) error
	// done, if not nil, receives the job's outcome exactly once; it must
	// have room for it (capacity 1).
	done chan<- error
	// sig is the signal that asked for the job, if one did: after a
	// hand-over, a job still queued is that signal to the new primary.
	sig syscall.Signal
}

// deployRequest asks for a deploy; the outcome arrives on the returned
// channel.
func deployRequest() (request, <-chan error) {
	done := make(chan error, 1)
	return request{op: "deploy", done: done}, done
}

// opRollback names the job of a rollback request.
const opRollback = "rollback"

// isDeploy reports whether r asks for a deploy or a rollback: what ends
// the probation of a deploy that runs (see newerDeploy).
func (r request) isDeploy() bool { return r.run == nil || r.op == opRollback }

// job is a queued or running request with everyone waiting for it.
type job struct {
	op      string
	run     func(context.Context) error
	waiters []chan<- error
	// unanswered: a request that waits for no answer (a signal) folded
	// into this deploy; after a hand-over it is passed on to the new
	// primary, while those who wait are told to ask it themselves.
	unanswered bool
	// sig is the signal that asked for a job other than a deploy.
	sig syscall.Signal
	// newer is closed once a deploy or a rollback is asked for while
	// this job runs (or was queued behind it).
	newer *newer
}

// newer is a channel closed at most once.
type newer struct {
	once sync.Once
	ch   chan struct{}
}

func newNewer() *newer { return &newer{ch: make(chan struct{})} }

func (n *newer) close() { n.once.Do(func() { close(n.ch) }) }

type newerKey struct{}

// withNewer gives a job's context the channel newerDeploy returns.
func withNewer(ctx context.Context, n *newer) context.Context {
	return context.WithValue(ctx, newerKey{}, n)
}

// newerDeploy returns a channel closed once a deploy or a rollback has
// been asked for after the job of ctx began, or queued behind it: a
// deploy in its probation then ends it, and the next one starts at once
// (nil, which never closes, outside a job).
func newerDeploy(ctx context.Context) <-chan struct{} {
	if n, ok := ctx.Value(newerKey{}).(*newer); ok {
		return n.ch
	}
	return nil
}

func (j *job) finish(err error) {
	for _, w := range j.waiters {
		w <- err
	}
	j.waiters = nil
}

// jobQueue holds the jobs not yet started.
type jobQueue []*job

// hasDeploy reports whether a deploy or a rollback is queued.
func (q jobQueue) hasDeploy() bool {
	for _, j := range q {
		if j.run == nil || j.op == opRollback {
			return true
		}
	}
	return false
}

// add queues r, folding a deploy into one already queued. It reports
// whether r started a new job.
func (q *jobQueue) add(r request) bool {
	if r.run == nil {
		for _, j := range *q {
			if j.run == nil {
				if r.done != nil {
					j.waiters = append(j.waiters, r.done)
				} else {
					j.unanswered = true
				}
				return false
			}
		}
	}
	j := &job{op: r.op, run: r.run, sig: r.sig}
	if j.op == "" {
		j.op = "deploy"
	}
	if r.done != nil {
		j.waiters = append(j.waiters, r.done)
	} else {
		j.unanswered = true
	}
	*q = append(*q, j)
	return true
}

// passOn lists, in the order queued, the signals that asked for the
// queued jobs nobody waits for: what a new primary that took over must
// get instead (HUP for a deploy, once, whatever asked for it).
func (q jobQueue) passOn() []os.Signal {
	var sigs []os.Signal
	for _, j := range q {
		switch {
		case j.run == nil && j.unanswered:
			sigs = append(sigs, syscall.SIGHUP)
		case j.run != nil && j.sig != 0:
			sigs = append(sigs, j.sig)
		}
	}
	return sigs
}

// finish answers every queued job with err and empties the queue.
func (q *jobQueue) finish(err error) {
	for _, j := range *q {
		j.finish(err)
	}
	*q = nil
}

// take removes the first job.
func (q *jobQueue) take() *job {
	j := (*q)[0]
	*q = (*q)[1:]
	return j
}
