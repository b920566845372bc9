// Command bindserver is an ordinary Go HTTP server that knows nothing of
// handoff: it binds its own port with ListenAndServe(":"+$PORT) and shuts
// down with Shutdown on SIGTERM. The end-to-end tests wrap it with handoff
// run, which adopts its bind (--adopt-bind). With $UNIX_SOCKET it serves
// on that unix socket instead: it removes a stale file first and binds it
// with net.Listen, whose Close removes the file again, as Go programs do.
//
// Shutdown alone loses requests, whoever runs the server: it drops a
// request it reads after it began (a connection accepted a moment before),
// and it closes idle keep-alive connections at once, racing a client that
// is sending on one. So on SIGTERM, before Shutdown, the server stops
// accepting (it closes the listener, which BaseContext hands it), answers
// every further request with "Connection: close", and gives its open
// connections a grace to finish.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// version is set at build time: go build -ldflags "-X main.version=v2".
var version = "dev"

// grace is how long open connections get to finish before Shutdown.
const grace = 500 * time.Millisecond

func main() {
	log.SetFlags(0)
	log.SetPrefix(fmt.Sprintf("bindserver %s pid=%d: ", version, os.Getpid()))
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	s := newServer(port)
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	served := s.start(port)
	select {
	case err := <-served:
		log.Fatal(err)
	case sig := <-stop:
		log.Printf("%s: draining", sig)
	}
	s.drain(served)
	log.Printf("drained")
}

// server is the HTTP server with what its drain needs: whether it is
// draining, the listener it serves and its open connections.
type server struct {
	srv      *http.Server
	draining atomic.Bool
	mu       sync.Mutex
	ln       net.Listener
	conns    map[net.Conn]http.ConnState
}

func newServer(port string) *server {
	s := &server{conns: map[net.Conn]http.ConnState{}}
	s.srv = &http.Server{
		Addr:              ":" + port,
		Handler:           http.HandlerFunc(s.answer),
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       s.keepListener,
		ConnState:         s.trackConn,
	}
	return s
}

// answer answers every request with the version, pid and worker slot;
// "Connection: close" once draining.
func (s *server) answer(w http.ResponseWriter, r *http.Request) {
	// Read the request through: a server that answers before it
	// has read the body may close the connection under a client
	// still sending it.
	io.Copy(io.Discard, r.Body)
	if s.draining.Load() {
		w.Header().Set("Connection", "close")
	}
	fmt.Fprintf(w, "%s pid=%d worker=%s\n", version, os.Getpid(), os.Getenv("HANDOFF_WORKER"))
}

// keepListener (BaseContext) keeps the listener, for the drain to close.
func (s *server) keepListener(l net.Listener) context.Context {
	s.mu.Lock()
	s.ln = l
	s.mu.Unlock()
	return context.Background()
}

// trackConn (ConnState) keeps the open connections.
func (s *server) trackConn(c net.Conn, st http.ConnState) {
	s.mu.Lock()
	if st == http.StateClosed || st == http.StateHijacked {
		delete(s.conns, c)
	} else {
		s.conns[c] = st
	}
	s.mu.Unlock()
}

// start serves on $UNIX_SOCKET, or else binds :port itself; the end of
// serving comes on the channel returned.
func (s *server) start(port string) chan error {
	served := make(chan error, 1)
	if path := os.Getenv("UNIX_SOCKET"); path != "" {
		os.Remove(path)
		ul, err := net.Listen("unix", path)
		if err != nil {
			log.Fatal(err)
		}
		go func() { served <- s.srv.Serve(ul) }()
		log.Printf("serving on %s", path)
	} else {
		go func() { served <- s.srv.ListenAndServe() }()
		log.Printf("serving on :%s", port)
	}
	return served
}

// drain stops accepting, answers with "Connection: close" from now on,
// gives the open connections the grace to finish, then shuts down.
func (s *server) drain(served chan error) {
	s.draining.Store(true)
	s.mu.Lock()
	if s.ln != nil {
		s.ln.Close()
	}
	s.mu.Unlock()
	<-served // every accepted connection is tracked now
	for end := time.Now().Add(grace); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		s.mu.Lock()
		n := len(s.conns)
		s.mu.Unlock()
		if n == 0 {
			break
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil && !errors.Is(err, net.ErrClosed) {
		log.Fatalf("shutdown: %v", err)
	}
}
