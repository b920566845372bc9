//go:build linux

package control

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/handoff-dev/handoff/internal/unixsock"
)

// Handler is the primary's side of the control socket: what the server
// asks of it, one method per op (see Request). Reload, Rollback and Scale
// return once the job they asked for has ended, or once ctx has (the
// server is closing). A reply whose Retry is set means that the primary
// handed over to a new one while the request was pending: the server
// answers that the client should ask again, naming the new primary when
// it knows it (see HandedOver). The server sets every reply's Pid.
type Handler interface {
	// Status is the answer to a status request.
	Status() Status
	Reload(ctx context.Context) Reply
	Rollback(ctx context.Context) Reply
	// Scale asks for workers workers, or, when delta is not 0, for the
	// current number plus delta.
	Scale(ctx context.Context, workers, delta int) Reply
	// Stop asks the primary to shut down, and returns at once: the
	// server answers, then holds the connection until it is closed.
	Stop()
}

// Server answers the control socket. The socket is a tableflip listener:
// a new primary inherits it, and the path never disappears during an
// upgrade. The old primary answers until it has handed over, then stops
// accepting; the new primary starts accepting once it has taken over, so
// connections made in between wait in the socket's queue and get the new
// primary's answer. The methods of a nil *Server do nothing.
type Server struct {
	h    Handler
	log  *zap.Logger
	path string
	ln   *net.UnixListener
	// lock is the path's lock (see lockSocket), held until Close.
	lock *os.File
	// ctx ends when the server closes: what a request waits for then is
	// dropped, and a stop request's connection ends.
	ctx    context.Context
	cancel context.CancelFunc

	mu        sync.Mutex
	accepting bool
	conns     map[*net.UnixConn]*conn
	// successor is the new primary's pid once this one has handed over:
	// every request still pending is then told to retry.
	successor int
	closed    bool
	wg        sync.WaitGroup
}

// ioTimeout bounds reading a request and writing a reply.
const ioTimeout = 10 * time.Second

// The server holds at most maxConns connections at once, so that clients
// that connect and stay silent, or flood the socket, cannot take the file
// descriptors a deploy needs. A connection past the bound takes the place
// of the oldest one still silent after idleGrace (a client sends its
// request as soon as it connects); with none, it is turned away. Either
// is told to retry (see Call), as after a hand-over.
const (
	maxConns  = 64
	idleGrace = time.Second
)

// conn is what the server knows of one connection.
type conn struct {
	since time.Time
	// busy: its request has been read; it is not evicted.
	busy bool
}

func newServer(path string, ln net.Listener, h Handler, log *zap.Logger) *Server {
	ul, _ := ln.(*net.UnixListener)
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{h: h, log: log, path: path, ln: ul, ctx: ctx, cancel: cancel, conns: map[*net.UnixConn]*conn{}}
}

// Path is the control socket's path.
func (s *Server) Path() string { return s.path }

// Serve starts accepting requests.
func (s *Server) Serve() {
	if s == nil || s.ln == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.accepting || s.closed {
		return
	}
	s.accepting = true
	own(s.lock)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.acceptLoop()
	}()
}

// acceptLoop accepts connections until the listener closes, each served
// by a goroutine of its own, within the bound of maxConns.
func (s *Server) acceptLoop() {
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// EMFILE and the like: keep going, a little later.
			time.Sleep(20 * time.Millisecond)
			continue
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		var evicted *net.UnixConn
		if len(s.conns) >= maxConns {
			if evicted = s.oldestSilentLocked(time.Now()); evicted == nil {
				s.mu.Unlock()
				turnAway(c)
				continue
			}
			delete(s.conns, evicted)
		}
		s.conns[c] = &conn{since: time.Now()}
		s.wg.Add(1)
		s.mu.Unlock()
		if evicted != nil {
			turnAway(evicted)
		}
		go func() {
			defer s.wg.Done()
			s.handle(c)
		}()
	}
}

// oldestSilentLocked is the connection that has waited longest for its
// request, longer than idleGrace; nil if none has.
func (s *Server) oldestSilentLocked(now time.Time) *net.UnixConn {
	var oldest *net.UnixConn
	var since time.Time
	for c, cc := range s.conns {
		if !cc.busy && now.Sub(cc.since) >= idleGrace && (oldest == nil || cc.since.Before(since)) {
			oldest, since = c, cc.since
		}
	}
	return oldest
}

// turnAway answers c, a connection past the bound, that it should try
// again, and closes it. The answer is small and c's buffer empty: the
// write does not wait (and is bounded if it would).
func turnAway(c *net.UnixConn) {
	tellRetry(c, fmt.Sprintf("busy: %d control connections are open", maxConns))
}

// tellRetry answers c that it should ask again, and closes it.
func tellRetry(c *net.UnixConn, why string) {
	b, _ := json.Marshal(Reply{Retry: true, Pid: os.Getpid(), Error: why})
	c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	c.Write(append(b, '\n'))
	c.Close()
}

// started marks c's request as read: it is not evicted from now on. False
// when it was evicted already (and told to retry): the request is
// dropped.
func (s *Server) started(c *net.UnixConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	cc, ok := s.conns[c]
	if ok {
		cc.busy = true
	}
	return ok
}

// HandedOver stops accepting: the new primary, successor, answers from
// now on, and pending requests are told to retry there.
func (s *Server) HandedOver(successor int) {
	if s == nil {
		return
	}
	s.mu.Lock()
	s.successor = successor
	s.mu.Unlock()
	if s.ln != nil {
		// Only this process's descriptor: the socket stays open in the
		// new primary.
		s.ln.Close()
	}
}

// Close stops accepting and ends every connection, waiting for their
// goroutines, then lets go of the path's lock; removeLock also removes
// the lock file, as the socket file goes (a primary stopping for good).
// Call it last, once the socket file is gone or belongs to a new primary:
// a stop request's client sees its connection end then.
func (s *Server) Close(removeLock bool) {
	if s == nil {
		return
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.cancel()
	for c := range s.conns {
		if s.successor != 0 {
			// Handed over: whatever was asked here and not answered yet
			// is asked again of the new primary (the client retries).
			tellRetry(c, handedOverTo(s.successor))
			continue
		}
		c.Close()
	}
	s.mu.Unlock()
	if s.ln != nil {
		s.ln.Close()
	}
	s.wg.Wait()
	release(s.lock, s.path, removeLock)
}

// handle serves one connection: who asks, what, and the answer.
func (s *Server) handle(c *net.UnixConn) {
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	cred, ok := s.admit(c)
	if !ok {
		return
	}
	req, ok := s.readRequest(c)
	if !ok {
		return
	}
	// Status is what monitoring polls: kept out of the info-level log.
	level := zap.InfoLevel
	if req.Op == "status" {
		level = zap.DebugLevel
	}
	s.log.Log(level, "control request", zap.String("op", req.Op), zap.Int("uid", int(cred.Uid)), zap.Int("client_pid", int(cred.Pid)))
	if r, ok := s.retry(); ok {
		reply(c, r)
		return
	}
	s.answer(c, req)
}

// reply writes r, from this primary, to c.
func reply(c *net.UnixConn, r Reply) {
	r.Pid = os.Getpid()
	c.SetWriteDeadline(time.Now().Add(ioTimeout))
	b, _ := json.Marshal(r)
	c.Write(append(b, '\n'))
}

// admit returns the credential of the process at the other end of c when
// it may control this primary: its user, or root. Anyone else is told
// why not.
func (s *Server) admit(c *net.UnixConn) (*unix.Ucred, bool) {
	cred, err := unixsock.PeerCred(c)
	if err != nil {
		reply(c, Reply{Error: "cannot tell who is asking: " + err.Error()})
		return nil, false
	}
	if cred.Uid != 0 && cred.Uid != uint32(os.Getuid()) {
		s.log.Warn("control request refused", zap.Int("uid", int(cred.Uid)), zap.Int("client_pid", int(cred.Pid)))
		reply(c, Reply{Error: fmt.Sprintf("permission denied: uid %d may not control this primary (only uid %d and root may)", cred.Uid, os.Getuid())})
		return nil, false
	}
	return cred, true
}

// readRequest reads c's request line and parses it. False when there is
// nothing to answer: no request (a probe that connects and goes away gets
// nothing), one evicted meanwhile, or a bad one, which was told why.
func (s *Server) readRequest(c *net.UnixConn) (Request, bool) {
	c.SetReadDeadline(time.Now().Add(ioTimeout))
	br := bufio.NewReaderSize(c, 512)
	line, err := readLine(br, MaxLine)
	if errors.Is(err, io.EOF) && len(line) > 0 {
		err = nil // a last line without its newline
	}
	if err != nil {
		if len(line) > 0 || errors.Is(err, errLineTooLong) {
			reply(c, Reply{Error: "bad request: " + err.Error()})
		}
		return Request{}, false
	}
	c.SetReadDeadline(time.Time{})
	if !s.started(c) {
		return Request{}, false
	}
	req, err := ParseRequest(line)
	if err != nil {
		reply(c, Reply{Error: "bad request: " + err.Error()})
		return Request{}, false
	}
	return req, true
}

// answer asks the handler for req's answer and writes it to c.
func (s *Server) answer(c *net.UnixConn, req Request) {
	switch req.Op {
	case "status":
		st := s.h.Status()
		reply(c, Reply{OK: true, Status: &st})
	case "reload":
		reply(c, s.pending(s.h.Reload(s.ctx)))
	case "rollback":
		reply(c, s.pending(s.h.Rollback(s.ctx)))
	case "scale":
		reply(c, s.pending(s.h.Scale(s.ctx, req.Workers, req.Delta)))
	case "stop":
		s.h.Stop()
		reply(c, Reply{OK: true, Message: "stopping"})
		// The connection ends when the primary has stopped (Close).
		c.CloseRead()
		<-s.ctx.Done()
	}
}

// retry is the answer to every request once this primary has handed over.
func (s *Server) retry() (Reply, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.successor == 0 {
		return Reply{}, false
	}
	return Reply{Retry: true, Error: handedOverTo(s.successor)}, true
}

// handedOverTo is what a client is told once this primary has handed
// over to the new one, pid: ask there.
func handedOverTo(pid int) string {
	return fmt.Sprintf("handed over to the new primary (pid %d)", pid)
}

// pending is the answer to a request the handler has answered r: a
// retry, if the primary handed over meanwhile, names the new primary once
// it is known.
func (s *Server) pending(r Reply) Reply {
	if !r.Retry {
		return r
	}
	if r, ok := s.retry(); ok {
		return r
	}
	return Reply{Retry: true, Error: "handed over to a new primary"}
}

// readLine reads one line of at most max bytes, without its newline.
func readLine(br *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		line = append(line, chunk...)
		if len(line) > max+1 {
			return line, errLineTooLong
		}
		if err == nil {
			return bytes.TrimSuffix(bytes.TrimSuffix(line, []byte("\n")), []byte("\r")), nil
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return line, err
		}
	}
}
