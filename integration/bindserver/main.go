// Command bindserver is an ordinary Go HTTP server that knows nothing of
// handoff: it binds its own port with http.ListenAndServe(":"+$PORT) and
// shuts down with Shutdown on SIGTERM. The end-to-end tests wrap it with
// handoff run, which adopts its bind (--adopt-bind).
//
// To lose no request on a keep-alive connection during a drain, every
// response from the SIGTERM on says "Connection: close", and Shutdown waits
// a short grace first, in which a busy client sends its next request on
// its idle connection (and gets that header): Shutdown alone closes idle
// connections at once, racing a client that is sending on one.
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"
)

// version is set at build time: go build -ldflags "-X main.version=v2".
var version = "dev"

func main() {
	log.SetFlags(0)
	log.SetPrefix(fmt.Sprintf("bindserver %s pid=%d: ", version, os.Getpid()))
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	var draining atomic.Bool
	srv := &http.Server{
		Addr: ":" + port,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if draining.Load() {
				w.Header().Set("Connection", "close")
			}
			fmt.Fprintf(w, "%s pid=%d worker=%s\n", version, os.Getpid(), os.Getenv("HANDOFF_WORKER"))
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	served := make(chan error, 1)
	go func() { served <- srv.ListenAndServe() }()
	log.Printf("serving on :%s", port)
	select {
	case err := <-served:
		log.Fatal(err)
	case sig := <-stop:
		log.Printf("%s: draining", sig)
	}
	draining.Store(true)
	time.Sleep(500 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		log.Fatalf("shutdown: %v", err)
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
	log.Printf("drained")
}
