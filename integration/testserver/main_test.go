package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/internal/testutil"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "testserver")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "testserver")
	out, err := exec.Command("go", "build", "-ldflags", "-X main.version=vtest", "-o", binary, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type proc struct {
	cmd    *exec.Cmd
	stderr *testutil.SyncBuffer
	exited chan error
}

func startProc(t *testing.T, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{cmd: cmd, stderr: &testutil.SyncBuffer{}, exited: make(chan error, 1)}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill() // this process only, by its pid
		<-p.exited
		if t.Failed() {
			t.Logf("stderr of pid %d:\n%s", cmd.Process.Pid, p.stderr)
		}
	})
	return p
}

// wait returns the exit code, failing after d.
func (p *proc) wait(t *testing.T, d time.Duration) int {
	t.Helper()
	select {
	case err := <-p.exited:
		p.exited <- err // for the cleanup
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(d):
		t.Fatalf("process did not exit within %v", d)
		return -1
	}
}

var listeningRE = regexp.MustCompile(`testserver vtest pid=(\d+) worker=(\S*) listening on (\S+)`)

func (p *proc) listening(t *testing.T) (addr string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if m := listeningRE.FindStringSubmatch(p.stderr.String()); m != nil {
			return m[3]
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no 'listening on' line; stderr: %s", p.stderr)
	return ""
}

func get(t *testing.T, url string) string {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	return string(b)
}

func TestStandaloneServesAndDrains(t *testing.T) {
	cmd := exec.Command(binary, "--listen", "127.0.0.1:0", "--drain", "2s")
	cmd.Env = append(os.Environ(), "HANDOFF_WORKER=7", "HANDOFF_GENERATION=3")
	p := startProc(t, cmd)
	addr := p.listening(t)
	want := fmt.Sprintf("vtest pid=%d worker=7 gen=3\n", cmd.Process.Pid)
	if got := get(t, "http://"+addr+"/anything"); got != want {
		t.Fatalf("body %q, want %q", got, want)
	}
	if got := get(t, "http://"+addr+"/slow?ms=50"); got != want {
		t.Fatalf("slow body %q", got)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if code := p.wait(t, 5*time.Second); code != 0 {
		t.Fatalf("exit %d after SIGTERM", code)
	}
}

// The primary's way: listener at fd 3, LISTEN_PID set to the pid that execs
// the worker, READY=1 expected on NOTIFY_SOCKET.
func TestSocketActivationAndReady(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	lf, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer lf.Close()

	dir, err := os.MkdirTemp("", "ts") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sockPath := filepath.Join(dir, "notify")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sockPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()

	// sh sets LISTEN_PID to its own pid, which exec keeps.
	cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ exec "$0" "$@"`, binary, "--listen", "127.0.0.1:1")
	cmd.ExtraFiles = []*os.File{lf}
	cmd.Env = append(os.Environ(), "LISTEN_FDS=1", "LISTEN_FDNAMES=web", "NOTIFY_SOCKET="+sockPath, "HANDOFF_TEST_MODE=ok")
	p := startProc(t, cmd)

	notify.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 512)
	n, err := notify.Read(buf)
	if err != nil || !strings.Contains(string(buf[:n]), "READY=1") {
		t.Fatalf("notify: %q %v", buf[:n], err)
	}
	if addr := p.listening(t); addr != ln.Addr().String() {
		t.Fatalf("listening on %s, want the passed %s", addr, ln.Addr())
	}
	env := get(t, "http://"+ln.Addr().String()+"/env")
	for _, want := range []string{"\nLISTEN_FDS=1\n", "\nLISTEN_FDNAMES=web\n", "\nLISTEN_PID=" + strconv.Itoa(cmd.Process.Pid) + "\n"} {
		if !strings.Contains("\n"+env, want) {
			t.Errorf("/env lacks %q", strings.TrimSpace(want))
		}
	}
	if !regexp.MustCompile(`(?m)^fds=0,1,2,3(,|$)`).MatchString(env) {
		t.Errorf("/env fds line: %s", env[strings.Index(env, "fds="):])
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if code := p.wait(t, 5*time.Second); code != 0 {
		t.Fatalf("exit %d after SIGTERM", code)
	}
}

func TestFailureModes(t *testing.T) {
	t.Run("crash", func(t *testing.T) {
		p := startProc(t, exec.Command(binary, "--mode", "crash"))
		if code := p.wait(t, 5*time.Second); code != 3 {
			t.Fatalf("exit %d, want 3", code)
		}
		if !strings.Contains(p.stderr.String(), "testserver: crashing at start (mode=crash)") {
			t.Fatalf("stderr: %s", p.stderr)
		}
	})
	for _, name := range []string{"crashlater", "crash-drain"} {
		t.Run(name, func(t *testing.T) {
			args := []string{"--listen", "127.0.0.1:0", "--crash-after", "100ms"}
			if name == "crash-drain" {
				args = append(args, "--crash-drain")
			}
			cmd := exec.Command(binary, args...)
			cmd.Env = append(os.Environ(), "HANDOFF_TEST_MODE=crashlater")
			exits(t, cmd, 4, "crashing after 100ms")
		})
	}
	t.Run("crashslot", func(t *testing.T) {
		cmd := exec.Command(binary, "--mode", "crashslot", "--listen", "127.0.0.1:0")
		cmd.Env = append(os.Environ(), "HANDOFF_WORKER=1")
		exits(t, cmd, 3, "testserver: crashing at start (mode=crashslot, worker=1)")
		cmd = exec.Command(binary, "--mode", "crashslot", "--crash-slot", "2", "--listen", "127.0.0.1:0")
		cmd.Env = append(os.Environ(), "HANDOFF_WORKER=1")
		p := startProc(t, cmd)
		get(t, "http://"+p.listening(t)+"/")
		p.cmd.Process.Signal(syscall.SIGTERM)
		if code := p.wait(t, 5*time.Second); code != 0 {
			t.Fatalf("slot 1 with --crash-slot 2: exit %d after SIGTERM, want 0", code)
		}
	})
	t.Run("exit-endpoint", func(t *testing.T) {
		p := startProc(t, exec.Command(binary, "--listen", "127.0.0.1:0"))
		get(t, "http://"+p.listening(t)+"/exit?code=9")
		if code := p.wait(t, 5*time.Second); code != 9 {
			t.Fatalf("exit %d, want 9", code)
		}
	})
	t.Run("wrong-LISTEN_PID", func(t *testing.T) {
		cmd := exec.Command(binary)
		cmd.Env = append(os.Environ(), "LISTEN_FDS=1", "LISTEN_PID=1")
		p := startProc(t, cmd)
		if code := p.wait(t, 5*time.Second); code != 2 {
			t.Fatalf("exit %d, want 2", code)
		}
	})
}

// exits starts cmd and checks that it exits with code, stderr saying
// what.
func exits(t *testing.T, cmd *exec.Cmd, code int, what string) {
	t.Helper()
	p := startProc(t, cmd)
	if c := p.wait(t, 5*time.Second); c != code {
		t.Fatalf("exit %d, want %d", c, code)
	}
	if !strings.Contains(p.stderr.String(), what) {
		t.Fatalf("stderr: %s", p.stderr)
	}
}

// --stall-accept-file: while the file exists a connection waits unanswered
// in the queue; once it is gone the same connection is answered. A stop
// signal while stalled still drains and exits 0.
func TestStallAcceptFile(t *testing.T) {
	stall := filepath.Join(t.TempDir(), "stall")
	if err := os.WriteFile(stall, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary, "--listen", "127.0.0.1:0", "--drain", "2s", "--stall-accept-file", stall)
	p := startProc(t, cmd)
	addr := p.listening(t)
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: stalled\r\nConnection: close\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	buf := make([]byte, 512)
	if n, err := c.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("stalled: read %q, %v; want nothing until the deadline", buf[:n], err)
	}
	if err := os.Remove(stall); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil || !strings.HasPrefix(string(b), "HTTP/1.1 200") || !strings.Contains(string(b), "vtest pid=") {
		t.Fatalf("after the file went: %q, %v", b, err)
	}

	cmd.Process.Signal(syscall.SIGTERM)
	if code := p.wait(t, 5*time.Second); code != 0 {
		t.Fatalf("exit %d after SIGTERM", code)
	}

	// A server that never accepted drains and exits on the stop signal.
	if err := os.WriteFile(stall, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd = exec.Command(binary, "--listen", "127.0.0.1:0", "--drain", "2s", "--stall-accept-file", stall)
	p = startProc(t, cmd)
	p.listening(t)
	cmd.Process.Signal(syscall.SIGTERM)
	if code := p.wait(t, 5*time.Second); code != 0 {
		t.Fatalf("exit %d after SIGTERM while stalled", code)
	}
}
