// Command wrapped-go is a plain Go HTTP server that knows nothing of
// handoff: it takes its listener by systemd socket activation (LISTEN_FDS),
// says READY=1 over sd_notify, and drains without losing a request on
// SIGTERM. Run it under handoff:
//
//	handoff run --listen 127.0.0.1:8080 --ready notify -- ./wrapped-go
//
// It also runs alone (go run . --listen 127.0.0.1:8080), and under systemd
// with a .socket unit, unchanged.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
)

// version is set at build time: go build -ldflags "-X main.version=v2".
var version = "dev"

func main() {
	addr := flag.String("listen", "127.0.0.1:8080", "address to listen on when not socket-activated")
	drain := flag.Duration("drain", 10*time.Second, "how long a drain may take")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix(fmt.Sprintf("wrapped-go %s pid=%d worker=%s: ", version, os.Getpid(), os.Getenv("HANDOFF_WORKER")))

	ln, err := listener(*addr)
	if err != nil {
		log.Fatal(err)
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)

	s := newServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s pid=%d worker=%s\n", version, os.Getpid(), os.Getenv("HANDOFF_WORKER"))
	}))
	served := make(chan error, 1)
	go func() { served <- s.srv.Serve(ln) }()
	// Ready once the listener is served; a no-op without NOTIFY_SOCKET.
	daemon.SdNotify(false, daemon.SdNotifyReady)
	log.Printf("serving on %s", ln.Addr())

	select {
	case sig := <-stop:
		log.Printf("%s: draining", sig)
	case err := <-served:
		log.Fatal(err)
	}
	daemon.SdNotify(false, daemon.SdNotifyStopping)
	if err := s.drain(ln, served, *drain); err != nil {
		log.Printf("drain: %v", err)
		os.Exit(1)
	}
	log.Printf("drained")
}

// listener takes the first socket-activated listener, or binds addr.
func listener(addr string) (net.Listener, error) {
	lns, err := activation.Listeners()
	if err != nil {
		return nil, err
	}
	if len(lns) > 0 && lns[0] != nil {
		return lns[0], nil
	}
	return net.Listen("tcp", addr)
}

// server tracks its connections so that a drain can wait for them.
type server struct {
	srv      *http.Server
	draining atomic.Bool
	mu       sync.Mutex
	conns    map[net.Conn]http.ConnState
	changed  chan struct{}
}

func newServer(h http.Handler) *server {
	s := &server{conns: map[net.Conn]http.ConnState{}, changed: make(chan struct{}, 1)}
	s.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if s.draining.Load() {
				// Every response from now on tells the client to go
				// elsewhere for its next request.
				w.Header().Set("Connection", "close")
			}
			h.ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: 10 * time.Second,
		ConnState: func(c net.Conn, st http.ConnState) {
			s.mu.Lock()
			if st == http.StateClosed || st == http.StateHijacked {
				delete(s.conns, c)
			} else {
				s.conns[c] = st
			}
			s.mu.Unlock()
			select {
			case s.changed <- struct{}{}:
			default:
			}
		},
	}
	return s
}

// drain loses no request: http.Server.Shutdown alone closes a connection
// that is sending a request, so first answer with Connection: close, stop
// accepting, wait for Serve to return (then every accepted connection is
// tracked), give the connections time to finish, and only then Shutdown.
func (s *server) drain(ln net.Listener, served <-chan error, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	s.draining.Store(true)
	ln.Close()
	if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
		return err
	}
	// Connections close themselves after their next response; idle ones
	// with no further request get a short grace.
	idleSince := time.Now()
	for time.Now().Before(deadline) {
		s.mu.Lock()
		active, idle := 0, 0
		for _, st := range s.conns {
			if st == http.StateIdle {
				idle++
			} else {
				active++
			}
		}
		s.mu.Unlock()
		if active == 0 && (idle == 0 || time.Since(idleSince) > time.Second) {
			break
		}
		if active > 0 {
			idleSince = time.Now()
		}
		select {
		case <-s.changed:
		case <-time.After(50 * time.Millisecond):
		}
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		s.srv.Close()
		return err
	}
	return nil
}
