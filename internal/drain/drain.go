// Package drain serves an *http.Server until a context ends, then drains it
// without losing a request.
//
// http.Server.Shutdown alone loses requests under load. It closes every
// connection it believes idle, but a keep-alive connection stays "idle" (in
// net/http's ConnState sense) until the server has read the complete headers
// of the next request; a request in flight on such a connection is then cut
// off and the client sees EOF or a reset with no response. A POST cannot be
// replayed by the client, so that request is lost. SetKeepAlivesEnabled(false)
// has the same flaw: it closes idle connections at once.
//
// Serve drains in this order instead:
//
//  1. Every request whose handler starts from now on is answered with
//     "Connection: close": net/http closes the connection after that response
//     and the client knows not to reuse it. No race: the client reads the
//     header before it would send anything else.
//  2. The listener is closed (by Serve itself, through a wrapper that makes
//     the later close by net/http a no-op), so no new connection is
//     accepted. Under handoff the listening socket is shared with the
//     primary and the other workers, so connections still queued in the
//     kernel are accepted by them, not refused.
//  3. Serve waits for http.Server.Serve to return: only then has every
//     accepted connection gone through ConnState(StateNew) and is tracked.
//  4. Serve waits for the connections to end, bounded by what is left of
//     the timeout. Active connections are left alone: they end on their own
//     after their response carries "Connection: close". An idle (or new)
//     connection never got that header (its last response was written before
//     the drain began, or it has not sent a request yet), so its client may
//     be sending a request on it right now, and nothing tells that client to
//     stop. Serve gives it a grace (timeout/10, at most 500ms, counted from
//     the later of the drain start and the moment the connection went idle):
//     a client that is busy sends its next request within the grace, gets
//     "Connection: close" and goes away cleanly. After the grace the
//     connection is closed, but only if no byte of a new request has been
//     read from it since it went idle (the conn is wrapped to count bytes
//     read) and, on Unix TCP, none is waiting in the kernel receive buffer
//     (MSG_PEEK). What remains is the race inherent to HTTP/1.1 keep-alive: a
//     client that stayed silent for the whole grace and sends its request in
//     the microseconds between that check and the close. Go's Transport
//     notices the close of an idle connection by itself and dials anew.
//  5. http.Server.Shutdown runs with what is left of the timeout (it finds
//     nothing left to do unless the bound has passed), and Close follows if
//     that expires.
//
// Serve is written for HTTP/1.x. HTTP/2 connections (TLS with h2) are only
// asked to go away by Shutdown in step 5, after step 4 waited for them until
// the bound.
package drain

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultTimeout is the drain bound used when Serve is given timeout <= 0.
const DefaultTimeout = 10 * time.Second

// MaxIdleGrace caps the grace an idle keep-alive connection gets before it
// is closed during a drain; the grace is timeout/10 below that cap.
const MaxIdleGrace = 500 * time.Millisecond

// pollInterval bounds how long the wait for connections sleeps between
// checks when no connection changes state.
const pollInterval = 50 * time.Millisecond

// Serve runs srv on ln until ctx is cancelled, then drains with zero lost
// requests and returns once every connection has ended (or the bound has
// passed). It returns nil after a clean drain.
//
// The bound is timeout (DefaultTimeout if timeout <= 0), counted from the
// cancellation of ctx. If connections remain when it passes, Serve closes
// them with srv.Close and returns an error that wraps
// context.DeadlineExceeded. If srv.Serve fails before ctx is cancelled,
// Serve drains the connections it has and returns that error.
//
// Serve takes srv over: it wraps srv.Handler (nil means
// http.DefaultServeMux) and srv.ConnState (the original is still called).
// Do not call Serve twice with the same srv, nor Shutdown or Close on it.
func Serve(ctx context.Context, srv *http.Server, ln net.Listener, timeout time.Duration) error {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	grace := timeout / 10
	if grace > MaxIdleGrace {
		grace = MaxIdleGrace
	}

	var draining atomic.Bool
	tr := takeOver(srv, &draining)

	dl := &listener{Listener: ln}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(dl) }()

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-served:
		served = nil
	}

	// (1) Connection: close on every request from now on.
	start := time.Now()
	deadline := start.Add(timeout)
	draining.Store(true)
	// (2) Stop accepting.
	_ = dl.Close()
	// (3) Every accepted connection is tracked once srv.Serve has returned.
	if served != nil {
		err := <-served
		if !dl.closedByUs(err) {
			serveErr = err
		}
	}
	// (4) Let the connections end, closing idle ones after a grace.
	left := tr.windDown(start, deadline, grace)
	// (5) Shutdown with what is left, Close after that.
	return closeRest(srv, tr, left, deadline, timeout, serveErr)
}

// takeOver wraps srv's Handler, to add Connection: close to every HTTP/1
// response once draining is set, and its ConnState, to track the
// connections in the returned tracker (the original hook is still called).
func takeOver(srv *http.Server, draining *atomic.Bool) *tracker {
	next := srv.Handler
	if next == nil {
		next = http.DefaultServeMux
	}
	srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if draining.Load() && r.ProtoMajor == 1 {
			w.Header().Set("Connection", "close")
		}
		next.ServeHTTP(w, r)
	})
	tr := newTracker()
	userHook := srv.ConnState
	srv.ConnState = func(c net.Conn, st http.ConnState) {
		tr.hook(c, st)
		if userHook != nil {
			userHook(c, st)
		}
	}
	return tr
}

// closeRest ends the drain once the wind-down has left left connections:
// srv.Shutdown until deadline if none is left, then srv.Close. It returns
// Serve's outcome: serveErr unless it is expected, joined with a
// DeadlineExceeded error if connections were still open at the bound.
func closeRest(srv *http.Server, tr *tracker, left int, deadline time.Time, timeout time.Duration, serveErr error) error {
	if left == 0 {
		sctx, cancel := context.WithDeadline(context.Background(), deadline)
		err := srv.Shutdown(sctx)
		cancel()
		if err == nil {
			return unexpected(serveErr)
		}
		// What Shutdown could not end in time, counted before Close
		// ends it.
		left = tr.count()
	}
	_ = srv.Close()
	if left == 0 {
		// Everything ended right at the bound.
		return unexpected(serveErr)
	}
	err := fmt.Errorf("drain: %d connection(s) still open after %v, closed: %w", left, timeout, context.DeadlineExceeded)
	if e := unexpected(serveErr); e != nil {
		err = errors.Join(e, err)
	}
	return err
}

func unexpected(err error) error {
	if err == nil || errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("drain: serve: %w", err)
}

// listener wraps the served listener: Close is idempotent (Serve closes it
// first, net/http again later), and accepted connections are wrapped to
// count the bytes read from them.
type listener struct {
	net.Listener
	once   sync.Once
	closed atomic.Bool
	err    error
}

func (l *listener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return wrapConn(c), nil
}

func (l *listener) Close() error {
	l.once.Do(func() {
		l.closed.Store(true)
		l.err = l.Listener.Close()
	})
	return l.err
}

// closedByUs reports whether err is what Accept returns because Serve
// closed the listener.
func (l *listener) closedByUs(err error) bool {
	return err == nil || (l.closed.Load() && errors.Is(err, net.ErrClosed)) || errors.Is(err, http.ErrServerClosed)
}

// conn counts the bytes read from a connection, so that a connection whose
// ConnState is still idle while the server is reading a new request from it
// is not mistaken for an idle one.
type conn struct {
	net.Conn
	read atomic.Int64
}

func (c *conn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.read.Add(int64(n))
	}
	return n, err
}

// closeWriteConn keeps CloseWrite visible: net/http half-closes a
// connection with it before closing to avoid a reset losing the response.
type closeWriteConn struct{ *conn }

func (c closeWriteConn) CloseWrite() error {
	return c.Conn.(interface{ CloseWrite() error }).CloseWrite()
}

func wrapConn(c net.Conn) net.Conn {
	if _, ok := c.(*tls.Conn); ok {
		// net/http needs to see the *tls.Conn itself.
		return c
	}
	w := &conn{Conn: c}
	if _, ok := c.(interface{ CloseWrite() error }); ok {
		return closeWriteConn{w}
	}
	return w
}

func unwrapConn(c net.Conn) *conn {
	switch c := c.(type) {
	case *conn:
		return c
	case closeWriteConn:
		return c.conn
	}
	return nil
}

type connInfo struct {
	state   http.ConnState
	since   time.Time
	c       *conn // nil when not wrapped (TLS)
	mark    int64 // c.read when the conn entered StateNew/StateIdle
	closing bool
}

// tracker follows the connections of one server through ConnState.
type tracker struct {
	mu      sync.Mutex
	conns   map[net.Conn]*connInfo
	changed chan struct{}
}

func newTracker() *tracker {
	return &tracker{conns: map[net.Conn]*connInfo{}, changed: make(chan struct{}, 1)}
}

func (t *tracker) hook(c net.Conn, st http.ConnState) {
	t.mu.Lock()
	switch st {
	case http.StateClosed, http.StateHijacked:
		delete(t.conns, c)
	default:
		ci := t.conns[c]
		if ci == nil {
			ci = &connInfo{c: unwrapConn(c)}
			t.conns[c] = ci
		}
		ci.state = st
		ci.since = time.Now()
		if ci.c != nil {
			ci.mark = ci.c.read.Load()
		}
	}
	t.mu.Unlock()
	select {
	case t.changed <- struct{}{}:
	default:
	}
}

func (t *tracker) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.conns)
}

// windDown waits until no connection is left or deadline passes, closing
// idle and new connections that stayed silent for grace since the later of
// start and their last state change. It returns how many are left.
func (t *tracker) windDown(start, deadline time.Time, grace time.Duration) int {
	for {
		now := time.Now()
		wake := now.Add(pollInterval)
		t.mu.Lock()
		left := len(t.conns)
		for nc, ci := range t.conns {
			if ci.closing || (ci.state != http.StateIdle && ci.state != http.StateNew) {
				continue
			}
			due := ci.since
			if due.Before(start) {
				due = start
			}
			due = due.Add(grace)
			if now.Before(due) {
				if due.Before(wake) {
					wake = due
				}
				continue
			}
			if ci.c != nil && (ci.c.read.Load() != ci.mark || inputPending(ci.c.Conn)) {
				// A request is arriving: it will be answered with
				// Connection: close. Look again later.
				continue
			}
			ci.closing = true
			_ = nc.Close()
		}
		t.mu.Unlock()
		if left == 0 {
			return 0
		}
		if !now.Before(deadline) {
			return left
		}
		if wake.After(deadline) {
			wake = deadline
		}
		timer := time.NewTimer(time.Until(wake))
		select {
		case <-t.changed:
		case <-timer.C:
		}
		timer.Stop()
	}
}
