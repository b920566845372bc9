//go:build linux

package runtime

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/handoff-dev/handoff/internal/unixsock"
)

// controlServer answers the control socket (see ControlRequest). The
// socket is a tableflip listener: a new primary inherits it, and the path
// never disappears during an upgrade. The old primary answers until it
// has handed over, then stops accepting; the new primary starts accepting
// once it has taken over, so connections made in between wait in the
// socket's queue and get the new primary's answer.
type controlServer struct {
	p    *primary
	path string
	ln   *net.UnixListener
	// lock is the path's lock (see lockControl), held until close.
	lock *os.File

	mu        sync.Mutex
	accepting bool
	conns     map[*net.UnixConn]*controlConn
	// successor is the new primary's pid once this one has handed over:
	// every request still pending is then told to retry.
	successor int
	quit      chan struct{}
	closed    bool
	wg        sync.WaitGroup
}

// controlIOTimeout bounds reading a request and writing a reply.
const controlIOTimeout = 10 * time.Second

// The control server holds at most maxControlConns connections at once,
// so that clients that connect and stay silent, or flood the socket,
// cannot take the file descriptors a deploy needs. A connection past the
// bound takes the place of the oldest one still silent after
// controlIdleGrace (a client sends its request as soon as it connects);
// with none, it is turned away. Either is told to retry (see Call), as
// after a hand-over.
const (
	maxControlConns  = 64
	controlIdleGrace = time.Second
)

// controlConn is what the server knows of one connection.
type controlConn struct {
	since time.Time
	// busy: its request has been read; it is not evicted.
	busy bool
}

// listenControl opens the control socket (inherited from the previous
// primary on an upgrade), at cfg.Control or the default path for the
// first listener's bound address. It does not accept yet (see serve).
func (p *primary) listenControl(network, addr string) (*controlServer, error) {
	path, isDefault := p.cfg.Control, false
	if path == "" {
		path, isDefault = DefaultControlPath(network, addr), true
	}
	flag := "--control " + path
	if isDefault {
		flag = "control socket " + path
	}
	if len(path) > maxSocketPath {
		return nil, fmt.Errorf("%s: a unix socket path may have at most %d bytes", flag, maxSocketPath)
	}
	if p.upg.HasParent() {
		ln, err := p.upg.Fds.Listener("unix", path)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", flag, err)
		}
		if ln != nil {
			// The path's lock, shared with the old primary (passed on to
			// the next one as it came).
			lock, err := p.upg.Fds.File(controlLockKey)
			if err != nil {
				ln.Close()
				return nil, fmt.Errorf("%s: %v", flag, err)
			}
			if lock == nil {
				// From a handoff that did not lock the path.
				if lock, err = lockControl(path); err == nil {
					p.upg.Fds.AddFile(controlLockKey, lock)
				}
			}
			s := p.newControlServer(path, ln)
			s.lock = lock
			return s, nil
		}
	}
	if err := prepareControlDir(filepath.Dir(path), isDefault); err != nil {
		if isDefault {
			return nil, fmt.Errorf("%s: %v (choose another place with --control PATH or %s)", flag, err, EnvControlDir)
		}
		return nil, fmt.Errorf("%s: %v", flag, err)
	}
	lock, err := claimControl(path)
	if err != nil {
		var live *unixsock.LiveError
		switch {
		case errors.Is(err, unixsock.ErrNotSocket):
			return nil, fmt.Errorf("%s: the path exists and is not a socket: remove it or give another --control path", flag)
		case errors.As(err, &live):
			return nil, fmt.Errorf("%s: %v (another handoff primary?): stop it, or give this one another --control path", flag, live)
		}
		return nil, fmt.Errorf("%s: %v", flag, unwrapAll(err))
	}
	ln, err := p.upg.ListenWithCallback("unix", path, func(network, addr string) (net.Listener, error) {
		ln, err := net.Listen(network, addr)
		if err != nil {
			return nil, err
		}
		// Until this chmod, the directory's mode and the credential
		// check keep others out.
		if err := os.Chmod(addr, 0o600); err != nil {
			ln.Close()
			return nil, err
		}
		return ln, nil
	})
	if err == nil {
		// For a new primary to hold it too, across the hand-over.
		err = p.upg.Fds.AddFile(controlLockKey, lock)
	}
	if err != nil {
		releaseControl(lock, path, true)
		return nil, fmt.Errorf("%s: %v", flag, err)
	}
	s := p.newControlServer(path, ln)
	s.lock = lock
	return s, nil
}

func (p *primary) newControlServer(path string, ln net.Listener) *controlServer {
	ul, _ := ln.(*net.UnixListener)
	return &controlServer{p: p, path: path, ln: ul, conns: map[*net.UnixConn]*controlConn{}, quit: make(chan struct{})}
}

// serve starts accepting requests.
func (s *controlServer) serve() {
	if s == nil || s.ln == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.accepting || s.closed {
		return
	}
	s.accepting = true
	ownControl(s.lock)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
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
			if len(s.conns) >= maxControlConns {
				if evicted = s.oldestSilentLocked(time.Now()); evicted == nil {
					s.mu.Unlock()
					turnAway(c)
					continue
				}
				delete(s.conns, evicted)
			}
			s.conns[c] = &controlConn{since: time.Now()}
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
	}()
}

// oldestSilentLocked is the connection that has waited longest for its
// request, longer than controlIdleGrace; nil if none has.
func (s *controlServer) oldestSilentLocked(now time.Time) *net.UnixConn {
	var oldest *net.UnixConn
	var since time.Time
	for c, cc := range s.conns {
		if !cc.busy && now.Sub(cc.since) >= controlIdleGrace && (oldest == nil || cc.since.Before(since)) {
			oldest, since = c, cc.since
		}
	}
	return oldest
}

// turnAway answers c, a connection past the bound, that it should try
// again, and closes it. The answer is small and c's buffer empty: the
// write does not wait (and is bounded if it would).
func turnAway(c *net.UnixConn) {
	tellRetry(c, fmt.Sprintf("busy: %d control connections are open", maxControlConns))
}

// tellRetry answers c that it should ask again, and closes it.
func tellRetry(c *net.UnixConn, why string) {
	b, _ := json.Marshal(ControlReply{Retry: true, Pid: os.Getpid(), Error: why})
	c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	c.Write(append(b, '\n'))
	c.Close()
}

// started marks c's request as read: it is not evicted from now on. False
// when it was evicted already (and told to retry): the request is
// dropped.
func (s *controlServer) started(c *net.UnixConn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	cc, ok := s.conns[c]
	if ok {
		cc.busy = true
	}
	return ok
}

// handedOver stops accepting: the new primary answers from now on, and
// pending requests are told to retry there.
func (s *controlServer) handedOver(successor int) {
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

// close stops accepting and ends every connection, waiting for their
// goroutines. Call it last, once the socket file is gone or belongs to a
// new primary: a stop request's client sees its connection end then.
func (s *controlServer) close() {
	if s == nil {
		return
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	close(s.quit)
	for c := range s.conns {
		if s.successor != 0 {
			// Handed over: whatever was asked here and not answered yet
			// is asked again of the new primary (the client retries).
			tellRetry(c, fmt.Sprintf("handed over to the new primary (pid %d)", s.successor))
			continue
		}
		c.Close()
	}
	s.mu.Unlock()
	if s.ln != nil {
		s.ln.Close()
	}
	s.wg.Wait()
	// The lock file goes with the socket file: when tableflip removed
	// that (a primary stopping without a successor; not a new primary
	// that never took over, whose old primary holds on).
	p := s.p
	releaseControl(s.lock, s.path, p.successor == nil && (p.owner || !p.upg.HasParent()))
}

func (s *controlServer) handle(c *net.UnixConn) {
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	reply := func(r ControlReply) {
		r.Pid = os.Getpid()
		c.SetWriteDeadline(time.Now().Add(controlIOTimeout))
		b, _ := json.Marshal(r)
		c.Write(append(b, '\n'))
	}
	cred, err := unixsock.PeerCred(c)
	if err != nil {
		reply(ControlReply{Error: "cannot tell who is asking: " + err.Error()})
		return
	}
	if cred.Uid != 0 && cred.Uid != uint32(os.Getuid()) {
		s.p.log.Warn("control request refused", zap.Int("uid", int(cred.Uid)), zap.Int("client_pid", int(cred.Pid)))
		reply(ControlReply{Error: fmt.Sprintf("permission denied: uid %d may not control this primary (only uid %d and root may)", cred.Uid, os.Getuid())})
		return
	}
	c.SetReadDeadline(time.Now().Add(controlIOTimeout))
	br := bufio.NewReaderSize(c, 512)
	line, err := readLine(br, MaxControlLine)
	if errors.Is(err, io.EOF) && len(line) > 0 {
		err = nil // a last line without its newline
	}
	if err != nil {
		if len(line) > 0 || errors.Is(err, errLineTooLong) {
			reply(ControlReply{Error: "bad request: " + err.Error()})
		}
		// A probe that connects and goes away gets nothing.
		return
	}
	c.SetReadDeadline(time.Time{})
	if !s.started(c) {
		return
	}
	req, err := ParseControlRequest(line)
	if err != nil {
		reply(ControlReply{Error: "bad request: " + err.Error()})
		return
	}
	// Status is what monitoring polls: kept out of the info-level log.
	level := zap.InfoLevel
	if req.Op == "status" {
		level = zap.DebugLevel
	}
	s.p.log.Log(level, "control request", zap.String("op", req.Op), zap.Int("uid", int(cred.Uid)), zap.Int("client_pid", int(cred.Pid)))
	if r, ok := s.retry(); ok {
		reply(r)
		return
	}
	switch req.Op {
	case "status":
		st := s.p.status()
		reply(ControlReply{OK: true, Status: &st})
	case "reload":
		reply(s.reload())
	case "rollback":
		reply(s.rollback())
	case "scale":
		reply(s.scale(req))
	case "stop":
		s.p.askShutdown(errors.New("stop asked for on the control socket"))
		reply(ControlReply{OK: true, Message: "stopping"})
		// The connection ends when the primary has stopped (close).
		c.CloseRead()
		<-s.quit
	}
}

// retry is the answer to every request once this primary has handed over.
func (s *controlServer) retry() (ControlReply, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.successor == 0 {
		return ControlReply{}, false
	}
	return ControlReply{Retry: true, Error: fmt.Sprintf("handed over to the new primary (pid %d)", s.successor)}, true
}

// await hands r to the primary's loop and waits for done. retry is true
// when the primary handed over meanwhile: the new primary is the one to
// ask.
func (s *controlServer) await(r request, done <-chan error) (err error, retry bool) {
	go s.p.ask(r)
	select {
	case err := <-done:
		return err, errors.Is(err, errHandedOver)
	case <-s.quit:
		return ErrShuttingDown, false
	}
}

// errLineTooLong is a request line longer than MaxControlLine.
var errLineTooLong = fmt.Errorf("request longer than %d bytes", MaxControlLine)

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

func (s *controlServer) reload() ControlReply {
	r, done := deployRequest()
	err, retry := s.await(r, done)
	if retry {
		return s.retryReply()
	}
	return s.deployReply(err)
}

func (s *controlServer) scale(req ControlRequest) ControlReply {
	done := make(chan error, 1)
	var to int
	run := s.p.scaleJob(req.Workers, req.Delta, &to)
	err, retry := s.await(request{op: "scale", run: run, done: done}, done)
	if retry {
		return s.retryReply()
	}
	if err != nil {
		return ControlReply{Error: "scale aborted: " + failureLine(err) + s.p.bindAdvice(err)}
	}
	return ControlReply{OK: true, Workers: to, Message: fmt.Sprintf("%d workers", to)}
}

func (s *controlServer) retryReply() ControlReply {
	if r, ok := s.retry(); ok {
		return r
	}
	return ControlReply{Retry: true, Error: "handed over to a new primary"}
}
