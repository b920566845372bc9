//go:build linux

package runtime

import (
	"errors"
	"net"
	"slices"
	"strings"
	"syscall"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/handoff-dev/handoff/internal/adopt"
	"github.com/handoff-dev/handoff/internal/testutil"
	"github.com/handoff-dev/handoff/workerpool"
)

func TestParseAdoptMode(t *testing.T) {
	for s, want := range map[string]AdoptMode{"auto": AdoptAuto, "on": AdoptOn, "off": AdoptOff} {
		got, err := ParseAdoptMode(s)
		if err != nil || got != want || got.String() != s {
			t.Errorf("ParseAdoptMode(%q) = %v, %v", s, got, err)
		}
	}
	for _, bad := range []string{"", "yes", "ON", "1"} {
		if _, err := ParseAdoptMode(bad); err == nil || !strings.Contains(err.Error(), "use auto, on or off") {
			t.Errorf("ParseAdoptMode(%q): %v", bad, err)
		}
	}
}

func TestWithPort(t *testing.T) {
	tcp := func(a string) Listener { return Listener{Network: "tcp", Address: a} }
	unixL := Listener{Network: "unix", Address: "/run/a.sock"}
	for _, tc := range []struct {
		env   []string
		ls    []Listener
		addrs []string
		want  string // PORT's value, "-" for none
	}{
		{nil, []Listener{tcp(":0")}, []string{"[::]:41234"}, "41234"},
		{nil, []Listener{unixL, tcp("127.0.0.1:3000"), tcp(":8080")}, []string{"/run/a.sock", "127.0.0.1:3000", "[::]:8080"}, "3000"},
		{nil, []Listener{unixL}, []string{"/run/a.sock"}, "-"},
		// The primary's own PORT wins, even empty.
		{[]string{"PORT=5000"}, []Listener{tcp(":3000")}, []string{"[::]:3000"}, "5000"},
		{[]string{"PORT="}, []Listener{tcp(":3000")}, []string{"[::]:3000"}, ""},
	} {
		env := withPort(slices.Clone(tc.env), tc.ls, tc.addrs)
		got := "-"
		for _, kv := range env {
			if v, ok := strings.CutPrefix(kv, "PORT="); ok {
				if got != "-" {
					t.Errorf("%v: PORT twice: %q", tc.addrs, env)
				}
				got = v
			}
		}
		if got != tc.want {
			t.Errorf("env %q, listeners %v: PORT %q, want %q", tc.env, tc.addrs, got, tc.want)
		}
	}
}

// What the failure line quotes of a worker's stderr.
func TestStderrEnd(t *testing.T) {
	node := `node:events:497
      throw er; // Unhandled 'error' event
      ^

Error: listen EADDRINUSE: address already in use :::3000
    at Server.setupListenHandle [as _listen2] (node:net:1908:16)
    at listenInCluster (node:net:1965:12)
Emitted 'error' event on Server instance at:
    at emitErrorNT (node:net:1944:8) {
  code: 'EADDRINUSE',
  errno: -98,
  syscall: 'listen',
  address: '::',
  port: 3000
}

Node.js v20.20.2
`
	python := `Traceback (most recent call last):
  File "/srv/app.py", line 9, in <module>
    HTTPServer(("", 3000), Handler).serve_forever()
  File "/usr/lib/python3.11/socketserver.py", line 466, in server_bind
    self.socket.bind(self.server_address)
OSError: [Errno 98] Address already in use
`
	for _, tc := range []struct{ name, tail, want string }{
		{"node", node, "Error: listen EADDRINUSE: address already in use :::3000 | … | port: 3000 | } | Node.js v20.20.2"},
		{"python", python, `File "/usr/lib/python3.11/socketserver.py", line 466, in server_bind | self.socket.bind(self.server_address) | OSError: [Errno 98] Address already in use`},
		{"go", "2026/01/02 10:00:00 listen tcp :3000: bind: address already in use\n", "2026/01/02 10:00:00 listen tcp :3000: bind: address already in use"},
		{"error just before", "panic: boom\nline 1\nline 2\nline 3\n", "panic: boom | line 1 | line 2 | line 3"},
		{"blank", "\n \n", ""},
		{"long line", strings.Repeat("x", 1000), strings.Repeat("x", stderrLineMax) + "…"},
	} {
		if got := stderrEnd(tc.tail); got != tc.want {
			t.Errorf("%s:\n got %q\nwant %q", tc.name, got, tc.want)
		}
	}
}

// A failed bind of an address in use gets advice that fits the adoption
// state, after the quoted stderr; other failures get none.
func TestBindAdvice(t *testing.T) {
	inUse := "Error: listen EADDRINUSE: address already in use :::3000\nNode.js v20.20.2\n"
	failed := func(tail string) error {
		return &workerpool.StartError{Slot: 0, Pid: 42, Reason: "exited", Exit: workerpool.Exit{Status: "exit status 1", StderrTail: tail}}
	}
	for _, tc := range []struct {
		name  string
		binds bindState
		want  []string
	}{
		{"off", bindState{off: "--adopt-bind off"}, []string{"; its stderr ends: Error: listen EADDRINUSE", "Node.js v20.20.2; if it binds a --listen address itself", "(--adopt-bind auto or on)", "fd 3 (LISTEN_FDS)"}},
		{"auto, refused", bindState{off: "seccomp() refused: operation not permitted"}, []string{"bind adoption is off here (seccomp() refused: operation not permitted)", "fd 3 (LISTEN_FDS)"}},
		{"on", bindState{on: true, addrs: []string{"127.0.0.1:3000"}}, []string{"is not one handoff adopts", "127.0.0.1:3000"}},
	} {
		p := &primary{binds: tc.binds}
		err := failed(inUse)
		got := failureLine(err) + p.bindAdvice(err)
		for _, w := range tc.want {
			if !strings.Contains(got, w) {
				t.Errorf("%s: %q lacks %q", tc.name, got, w)
			}
		}
		if strings.Contains(got, "\n") {
			t.Errorf("%s: not one line: %q", tc.name, got)
		}
		rb := &workerpool.RolledBackError{Cause: err}
		if adv := p.bindAdvice(rb); adv == "" || !strings.Contains(got, adv) {
			t.Errorf("%s: a rolled-back deploy gets advice %q", tc.name, adv)
		}
		if adv := p.bindAdvice(failed("boom\n")); adv != "" {
			t.Errorf("%s: another failure gets advice %q", tc.name, adv)
		}
	}
}

func testPrimary(t *testing.T, mode AdoptMode) (*primary, []int, *observer.ObservedLogs) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	fd, err := rawFd(ln)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	core, logs := observer.New(zap.DebugLevel)
	p := &primary{
		cfg:   Config{AdoptBind: mode, Listeners: []Listener{{Name: "web", Network: "tcp", Address: "127.0.0.1:0"}}},
		log:   zap.New(core),
		addrs: []string{ln.Addr().String()},
		env:   []string{"HOME=/root"},
	}
	return p, []int{fd}, logs
}

// --adopt-bind auto falls back to off with one info line that says why
// where the system refuses (simulated); on makes it a start-up error; off
// never probes.
func TestAdoptModes(t *testing.T) {
	refusal := errors.New("seccomp() refused (a container's seccomp profile, or a kernel without seccomp): operation not permitted")
	probed := 0
	defer func(orig func(adopt.ProbeOptions) error) { probeAdoption = orig }(probeAdoption)
	probeAdoption = func(adopt.ProbeOptions) error { probed++; return refusal }

	p, fds, logs := testPrimary(t, AdoptAuto)
	s, err := p.setUpBinds(fds, nil)
	if err != nil || s != nil || p.binds.on {
		t.Fatalf("auto, refused: %v, %v, on=%v", s, err, p.binds.on)
	}
	offs := logs.FilterMessage("bind adoption off").All()
	if len(offs) != 1 || offs[0].ContextMap()["reason"] != refusal.Error() || offs[0].Level != zap.InfoLevel {
		t.Errorf("auto, refused: events %v, want one info \"bind adoption off\" with the reason", logs.All())
	}
	if p.binds.off != refusal.Error() {
		t.Errorf("auto, refused: off = %q", p.binds.off)
	}
	if p.adoptFD(s) != nil {
		t.Error("auto, refused: workers get an adoption fd")
	}
	if !slices.Contains(p.env, "PORT="+strings.TrimPrefix(p.addrs[0], "127.0.0.1:")) {
		t.Errorf("PORT is not in the workers' environment: %q", p.env)
	}

	p, fds, logs = testPrimary(t, AdoptOn)
	s, err = p.setUpBinds(fds, nil)
	if err == nil || s != nil || !strings.HasPrefix(err.Error(), "--adopt-bind on: bind adoption cannot work here: seccomp() refused") || !strings.Contains(err.Error(), "--adopt-bind off") {
		t.Fatalf("on, refused: %v, %v", s, err)
	}
	if logs.Len() != 0 {
		t.Errorf("on, refused: logged %v", logs.All())
	}

	// --ready bind cannot work without adoption: auto becomes on.
	p, fds, logs = testPrimary(t, AdoptAuto)
	p.cfg.Ready = ReadyBind
	s, err = p.setUpBinds(fds, nil)
	if err == nil || s != nil || !strings.HasPrefix(err.Error(), "--ready bind: bind adoption cannot work here: seccomp() refused") {
		t.Fatalf("auto, --ready bind, refused: %v, %v", s, err)
	}
	if logs.Len() != 0 {
		t.Errorf("auto, --ready bind, refused: logged %v", logs.All())
	}

	probed = 0
	p, fds, _ = testPrimary(t, AdoptOff)
	if s, err = p.setUpBinds(fds, nil); err != nil || s != nil || probed != 0 {
		t.Fatalf("off: %v, %v, probed %d times", s, err, probed)
	}
	p, fds, _ = testPrimary(t, AdoptOff)
	p.cfg.Ready = ReadyBind
	if s, err = p.setUpBinds(fds, nil); err == nil || !strings.HasPrefix(err.Error(), "--ready bind needs bind adoption, which --adopt-bind off turns off") || probed != 0 {
		t.Fatalf("off, --ready bind: %v, %v, probed %d times", s, err, probed)
	}
}

// Where the system allows it, auto and on make a Supervisor, and every
// worker gets a channel to it.
func TestAdoptOn(t *testing.T) {
	if err := adopt.Probe(); err != nil {
		testutil.Need(t, "bind adoption unavailable here: %v", err)
	}
	for _, mode := range []AdoptMode{AdoptAuto, AdoptOn} {
		p, fds, logs := testPrimary(t, mode)
		s, err := p.setUpBinds(fds, nil)
		if err != nil || s == nil || !p.binds.on {
			t.Fatalf("%v: %v, %v", mode, s, err)
		}
		if n := logs.FilterMessage("bind adoption off").Len(); n != 0 {
			t.Errorf("%v: logged bind adoption off", mode)
		}
		x, err := p.adoptFD(s)(0, 1, fds)
		if err != nil {
			t.Fatal(err)
		}
		if env := x.Env(7); !strings.HasPrefix(env, adopt.EnvFD+"=7") {
			t.Errorf("%v: worker env %q", mode, env)
		}
		var st unix.Stat_t
		if err := unix.Fstat(x.FD, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
			t.Errorf("%v: the worker's fd is not a socket: %v", mode, err)
		}
		x.Started(0, nil)
		if err := unix.Fstat(x.FD, &st); err == nil {
			t.Errorf("%v: the worker's fd is still open after a failed start", mode)
		}
		s.Close()
	}
}
