//go:build linux && (amd64 || arm64)

package shim

import (
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/handoff-dev/handoff/internal/adopt"
	"github.com/handoff-dev/handoff/internal/testutil"
)

// bindEnv makes the test binary, exec'd by the shim, bind that address and
// print the inode of the socket it got.
const bindEnv = "SHIM_TEST_BIND"

func init() {
	// Run by the shim as a command (Main has returned: no marker).
	if addr := os.Getenv(bindEnv); addr != "" && os.Getenv(EnvMarker) == "" {
		fmt.Println(bindAndStat(addr))
		os.Exit(0)
	}
}

func bindAndStat(addr string) string {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "err " + err.Error()
	}
	rc, _ := ln.(syscall.Conn).SyscallConn()
	var st unix.Stat_t
	rc.Control(func(fd uintptr) { unix.Fstat(int(fd), &st) })
	status, _ := os.ReadFile("/proc/self/status")
	var flags []string
	for _, l := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(l, "NoNewPrivs:") || strings.HasPrefix(l, "Seccomp:") {
			flags = append(flags, strings.Join(strings.Fields(l), ""))
		}
	}
	_, set := os.LookupEnv(adopt.EnvFD)
	return fmt.Sprintf("ino=%d %s env=%v", st.Ino, strings.Join(flags, " "), set)
}

// With adopt.EnvFD, the shim installs the filter on the thread that execs
// and hands its notification fd to the primary: the command's bind of the
// listener's address (net.Listen("tcp", ":PORT"), as a server written to
// run alone does) gets the primary's socket. The command runs with
// no_new_privs and the filter, and does not see adopt.EnvFD.
func TestExecAdoptsBinds(t *testing.T) {
	if err := adopt.Probe(); err != nil {
		testutil.Need(t, "bind adoption unavailable here: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	rc, _ := ln.(syscall.Conn).SyscallConn()
	var lfd int
	var st unix.Stat_t
	rc.Control(func(fd uintptr) {
		lfd, _ = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 3)
		unix.Fstat(int(fd), &st)
	})
	defer unix.Close(lfd)
	s, err := adopt.NewSupervisor([]adopt.Listener{{Name: "web", Network: "tcp", Addr: ln.Addr().String(), FD: lfd}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	pend, err := s.Prepare()
	if err != nil {
		t.Fatal(err)
	}
	dup, _ := unix.FcntlInt(uintptr(pend.FD), unix.F_DUPFD_CLOEXEC, 3)
	end := os.NewFile(uintptr(dup), "adopt")
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	cmd, stderr := shim(t, os.Args[0], []string{pend.Env(3), bindEnv + "=:" + port}, "worker")
	cmd.ExtraFiles = []*os.File{end}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		pend.Started(0, nil, nil)
		t.Fatal(err)
	}
	end.Close()
	pend.Started(cmd.Process.Pid, nil, nil)
	out, _ := io.ReadAll(stdout)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("%v; stderr %q", err, stderr)
	}
	want := fmt.Sprintf("ino=%d NoNewPrivs:1 Seccomp:2 env=false", st.Ino)
	if got := strings.TrimSpace(string(out)); got != want {
		t.Fatalf("command said %q, want %q; stderr %q", got, want, stderr)
	}
}

// Without adopt.EnvFD nothing changes: a bind of a port in use fails as it
// would.
func TestExecWithoutAdoption(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cmd, stderr := shim(t, os.Args[0], []string{bindEnv + "=" + ln.Addr().String()}, "worker")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%v; stderr %q", err, stderr)
	}
	if got := strings.TrimSpace(string(out)); !strings.HasPrefix(got, "err ") || !strings.Contains(got, "address already in use") {
		t.Fatalf("command said %q, want the bind to fail", got)
	}
}
