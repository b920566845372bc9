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
	var (
		draining atomic.Bool
		mu       sync.Mutex
		ln       net.Listener
		conns    = map[net.Conn]http.ConnState{}
	)
	srv := &http.Server{
		Addr: ":" + port,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// Read the request through: a server that answers before it
			// has read the body may close the connection under a client
			// still sending it.
			io.Copy(io.Discard, r.Body)
			if draining.Load() {
				w.Header().Set("Connection", "close")
			}
			fmt.Fprintf(w, "%s pid=%d worker=%s\n", version, os.Getpid(), os.Getenv("HANDOFF_WORKER"))
		}),
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext: func(l net.Listener) context.Context {
			mu.Lock()
			ln = l
			mu.Unlock()
			return context.Background()
		},
		ConnState: func(c net.Conn, st http.ConnState) {
			mu.Lock()
			if st == http.StateClosed || st == http.StateHijacked {
				delete(conns, c)
			} else {
				conns[c] = st
			}
			mu.Unlock()
		},
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	served := make(chan error, 1)
	if path := os.Getenv("UNIX_SOCKET"); path != "" {
		os.Remove(path)
		ul, err := net.Listen("unix", path)
		if err != nil {
			log.Fatal(err)
		}
		go func() { served <- srv.Serve(ul) }()
		log.Printf("serving on %s", path)
	} else {
		go func() { served <- srv.ListenAndServe() }()
		log.Printf("serving on :%s", port)
	}
	select {
	case err := <-served:
		log.Fatal(err)
	case sig := <-stop:
		log.Printf("%s: draining", sig)
	}
	draining.Store(true)
	mu.Lock()
	if ln != nil {
		ln.Close()
	}
	mu.Unlock()
	<-served // every accepted connection is tracked now
	for end := time.Now().Add(grace); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		n := len(conns)
		mu.Unlock()
		if n == 0 {
			break
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil && !errors.Is(err, net.ErrClosed) {
		log.Fatalf("shutdown: %v", err)
	}
	log.Printf("drained")
}
