//go:build linux

package steer

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/internal/loadgen"
)

func TestMain(m *testing.M) {
	if v := os.Getenv("STEER_TEST_SERVER"); v != "" {
		goServer(v)
		return
	}
	if st := os.Getenv("STEER_TEST_IMPORT"); st != "" {
		importer(st)
		return
	}
	os.Exit(m.Run())
}

// goServer is the ordinary Go server: net/http on the socket at fd 3, and
// on SIGTERM srv.Shutdown, nothing more.
func goServer(version string) {
	ln, err := net.FileListener(os.NewFile(3, "listener"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "%s pid=%d\n", version, os.Getpid())
	})}
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		<-term
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		close(done)
	}()
	fmt.Println("ready")
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	<-done
}

// startServer runs goServer on m's socket as a worker process would.
func startServer(t *testing.T, m *Member, version string) *exec.Cmd {
	t.Helper()
	cmd, _ := startChild(t, []string{"STEER_TEST_SERVER=" + version}, []*os.File{m.File()}, "ready")
	return cmd
}

// startChild starts this test binary with env added and files as fds 3..,
// and waits until the first line it prints is want. The test kills it (by
// its pid) at the end if it still runs.
func startChild(t *testing.T, env []string, files []*os.File, want string) (*exec.Cmd, io.WriteCloser) {
	t.Helper()
	cmd := exec.Command("/proc/self/exe", "-test.run=^$")
	cmd.Env = append(os.Environ(), env...)
	cmd.ExtraFiles = files
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	said := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(out).ReadString('\n')
		if err == nil && line != want+"\n" {
			err = fmt.Errorf("the child said %q", line)
		}
		said <- err
		io.Copy(io.Discard, out)
	}()
	select {
	case err := <-said:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the child did not say %q within 30s", want)
	}
	return cmd, stdin
}

// stopServer sends SIGTERM and waits for the server to exit.
func stopServer(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("server %d: %v", cmd.Process.Pid, err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("server %d still running 30s after SIGTERM", cmd.Process.Pid)
	}
}

// waitVersion waits until the load has had n answers from version v.
func waitVersion(t *testing.T, run *loadgen.Run, v string, n int64) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for run.Snapshot().Versions[v] < n {
		if time.Now().After(deadline) {
			t.Fatalf("no %d answers from %s within 30s: %v", n, v, run.Snapshot())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// deploys runs the ordinary Go server on the group under new-connection
// POST load and deploys it n times: a new member and server, then the old
// server retires as the mode allows — steered away and drained before its
// SIGTERM, or (Shared) SIGTERM at once.
func deploys(t *testing.T, mode Mode, n int) loadgen.Result {
	g, err := New("127.0.0.1:0", mode)
	if err != nil {
		t.Fatal(err)
	}
	defer g.CloseAll()
	old, err := g.Add()
	if err != nil {
		t.Fatal(err)
	}
	srv := startServer(t, old, "v0")
	if err := g.SetServing(old); err != nil {
		t.Fatal(err)
	}
	run := loadgen.Start(context.Background(), loadgen.Config{
		URL: "http://" + g.Addr().String() + "/", NewConn: 8, Duration: 5 * time.Minute,
	})
	defer run.Stop()
	waitVersion(t, run, "v0", 50)
	for i := 1; i <= n; i++ {
		v := fmt.Sprintf("v%d", i)
		run.BeginWindow()
		m, err := g.Add()
		if err != nil {
			t.Fatal(err)
		}
		next := startServer(t, m, v)
		if err := g.SetServing(m); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err = g.Drain(ctx, old)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		stopServer(t, srv)
		if err := g.Close(old); err != nil {
			t.Fatal(err)
		}
		run.EndWindow()
		waitVersion(t, run, v, 50)
		old, srv = m, next
	}
	res := run.Stop()
	stopServer(t, srv)
	return res
}

// TestGoServerDeploys: the ordinary Go server loses no request across
// deploys when its socket is steered away and drained before SIGTERM. The
// same deploys on one shared socket are measured and logged.
func TestGoServerDeploys(t *testing.T) {
	if testing.Short() {
		t.Skip("starts server processes under load")
	}
	const n = 6
	for _, mode := range modes(t) {
		t.Run(mode.String(), func(t *testing.T) {
			res := deploys(t, mode, n)
			t.Logf("%s, %d deploys: %v", mode, n, res)
			if res.Failures != 0 {
				t.Errorf("%d of %d requests failed across %d deploys: %v", res.Failures, res.Requests, n, res.FailuresByKind)
			}
		})
	}
	t.Run("shared", func(t *testing.T) {
		res := deploys(t, Shared, n)
		t.Logf("shared socket (no steering), %d deploys: %d of %d requests failed: %v", n, res.Failures, res.Requests, res.FailuresByKind)
	})
}
