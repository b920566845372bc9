// Command benchserver is the hello-world HTTP server the benchmarks measure
// (internal/bench). One program, three ways to run it:
//
//   - alone, listening itself on --listen: the "direct" baseline, and the
//     server a naive stop-then-start restarter kills and starts again;
//   - under handoff: it takes its listener by socket activation
//     (LISTEN_FDS), sends READY=1 to $NOTIFY_SOCKET once it serves, and
//     drains with internal/drain (zero loss) on SIGTERM;
//   - with --tableflip: the pattern of tableflip's README in one process —
//     upg.Listen, upg.Ready, Upgrade on SIGHUP, and http.Server.Shutdown
//     once upg.Exit() fires.
//
// --bind makes it bind its own port, :$PORT, even under handoff (a server
// written to run alone), for handoff's bind adoption (--adopt-bind).
//
// --spew N makes it write N lines of --spew-size bytes to stdout, as fast
// as it can, on every SIGUSR1 (the worker-output benchmark).
//
// --ready-delay makes it take that long to get ready (before it serves and
// before READY=1), to model an application with a slow start.
//
// Every answer is "VERSION pid=PID worker=SLOT", which the load generator
// counts per version and per pid.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/cloudflare/tableflip"
	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"

	"github.com/handoff-dev/handoff/internal/drain"
)

func main() {
	addr := flag.String("listen", "127.0.0.1:8080", "address to listen on when not socket-activated")
	version := flag.String("version", "", "first word of every answer (default: the executable's version trailer, or v1)")
	readyDelay := flag.Duration("ready-delay", 0, "time the server takes to get ready before it serves and sends READY=1")
	drainTimeout := flag.Duration("drain", 10*time.Second, "bound of the drain on SIGTERM")
	useTableflip := flag.Bool("tableflip", false, "run as tableflip's README shows: Upgrade on SIGHUP, Shutdown on Exit")
	pidFile := flag.String("pid-file", "", "with --tableflip: the pid file tableflip maintains")
	bind := flag.Bool("bind", false, "bind :$PORT itself, ignoring LISTEN_FDS (bind adoption under handoff)")
	spew := flag.Int("spew", 0, "on SIGUSR1, write this many lines to stdout")
	spewSize := flag.Int("spew-size", 100, "with --spew: bytes per line, newline included")
	flag.Parse()
	if *version == "" {
		*version = trailerVersion()
	}
	log.SetFlags(0)
	log.SetPrefix(fmt.Sprintf("benchserver %s pid=%d: ", *version, os.Getpid()))

	worker := os.Getenv("HANDOFF_WORKER")
	answer := fmt.Sprintf("%s pid=%d worker=%s\n", *version, os.Getpid(), worker)
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, answer)
	})
	if *useTableflip {
		if err := runTableflip(*addr, *pidFile, *readyDelay, handler); err != nil {
			log.Fatal(err)
		}
		return
	}

	ln, err := listener(*addr, *bind)
	if err != nil {
		log.Fatal(err)
	}
	if *spew > 0 {
		spewOnUSR1(*spew, *spewSize)
	}
	time.Sleep(*readyDelay)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan error, 1)
	go func() { done <- drain.Serve(ctx, srv, ln, *drainTimeout) }()
	daemon.SdNotify(false, daemon.SdNotifyReady) // a no-op without NOTIFY_SOCKET
	if err := <-done; err != nil {
		log.Fatal(err)
	}
}

// spewOnUSR1 writes n lines of size bytes to stdout on every SIGUSR1.
func spewOnUSR1(n, size int) {
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	go func() {
		for range usr1 {
			w := bufio.NewWriterSize(os.Stdout, 64<<10)
			line := []byte(fmt.Sprintf("spew %d ", os.Getpid()))
			for len(line) < size-1 {
				line = append(line, 'x')
			}
			line = append(line, '\n')
			for i := 0; i < n; i++ {
				w.Write(line)
			}
			w.Flush()
		}
	}()
}

// TrailerPrefix starts the version trailer: a copy of this executable with
// "\nBENCHVERSION=NAME\n" appended (past the end of the ELF image, which
// the loader ignores) answers NAME. The dev-loop benchmark lands new
// versions that way, without a compiler.
const trailerPrefix = "\nBENCHVERSION="

func trailerVersion() string {
	exe, err := os.Executable()
	if err != nil {
		return "v1"
	}
	f, err := os.Open(exe)
	if err != nil {
		return "v1"
	}
	defer f.Close()
	buf := make([]byte, 128)
	fi, err := f.Stat()
	if err != nil || fi.Size() < int64(len(buf)) {
		return "v1"
	}
	n, _ := f.ReadAt(buf, fi.Size()-int64(len(buf)))
	tail := string(buf[:n])
	i := strings.LastIndex(tail, trailerPrefix)
	if i < 0 {
		return "v1"
	}
	return strings.TrimSpace(tail[i+len(trailerPrefix):])
}

// listener takes the first socket-activated listener, or binds addr; with
// bind, it binds :$PORT.
func listener(addr string, bind bool) (net.Listener, error) {
	if bind {
		return net.Listen("tcp", ":"+os.Getenv("PORT"))
	}
	lns, err := activation.Listeners()
	if err != nil {
		return nil, err
	}
	if len(lns) > 0 && lns[0] != nil {
		return lns[0], nil
	}
	return net.Listen("tcp", addr)
}

// runTableflip follows the README of github.com/cloudflare/tableflip and its
// HTTP example: a SIGHUP upgrades (the new process inherits the listener),
// and the old process calls http.Server.Shutdown when upg.Exit() fires.
// SIGTERM stops it the same way.
func runTableflip(addr, pidFile string, readyDelay time.Duration, h http.Handler) error {
	upg, err := tableflip.New(tableflip.Options{PIDFile: pidFile})
	if err != nil {
		return err
	}
	defer upg.Stop()
	// Notify before Ready: Ready writes the pid file, and a SIGHUP sent to
	// that pid must find the handler in place, not kill the process.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGHUP, syscall.SIGTERM)
	go func() {
		for s := range sig {
			if s == syscall.SIGTERM {
				upg.Stop()
				return
			}
			if err := upg.Upgrade(); err != nil {
				log.Println("upgrade failed:", err)
			}
		}
	}()
	ln, err := upg.Listen("tcp", addr)
	if err != nil {
		return err
	}
	time.Sleep(readyDelay)
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	if err := upg.Ready(); err != nil {
		return err
	}
	<-upg.Exit()
	time.AfterFunc(30*time.Second, func() { os.Exit(1) })
	return srv.Shutdown(context.Background())
}
