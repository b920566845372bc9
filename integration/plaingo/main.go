// Command plaingo is the Go server most services are, and knows nothing of
// handoff: it serves on ":"+$PORT with http.Server's ListenAndServe and,
// on SIGTERM or SIGINT, calls Shutdown, nothing more. No careful drain, no
// LISTEN_FDS: under handoff run its bind is adopted (--adopt-bind auto).
//
// Every request is answered 200, after its body has been read, with
//
//	<version> pid=<pid> worker=<HANDOFF_WORKER> gen=<HANDOFF_GENERATION>
//
// as integration/testserver answers, so that the tests and internal/loadgen
// count versions and workers alike. The version is set at build time:
//
//	go build -ldflags "-X main.version=v2" ./integration/plaingo
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

var version = "dev"

func main() {
	log.SetFlags(0)
	log.SetPrefix(fmt.Sprintf("plaingo %s pid=%d: ", version, os.Getpid()))
	reply := fmt.Sprintf("%s pid=%d worker=%s gen=%s\n", version, os.Getpid(),
		os.Getenv("HANDOFF_WORKER"), os.Getenv("HANDOFF_GENERATION"))
	srv := &http.Server{
		Addr: ":" + os.Getenv("PORT"),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body)
			io.WriteString(w, reply)
		}),
	}
	// As http.Server.Shutdown's documentation shows: ListenAndServe
	// returns at once when Shutdown begins, so main waits for Shutdown.
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	shutDown := make(chan struct{})
	go func() {
		<-stop
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			log.Printf("shutdown: %v", err)
		}
		close(shutDown)
	}()
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
	<-shutDown
}
