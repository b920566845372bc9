//go:build linux

package steer

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// modes are the steering modes this process can test: Random always,
// RoundRobin when it may load eBPF (always as root: a failure is then a
// failure, not a skip).
func modes(t *testing.T) []Mode {
	ms := []Mode{Random}
	g, err := New("127.0.0.1:0", RoundRobin)
	switch {
	case err == nil:
		g.CloseAll()
		ms = append(ms, RoundRobin)
	case os.Geteuid() == 0:
		t.Fatalf("round-robin as root: %v", err)
	default:
		t.Logf("round-robin not tested: %v", err)
	}
	return ms
}

func needRoundRobin(t *testing.T) {
	t.Helper()
	g, err := New("127.0.0.1:0", RoundRobin)
	if err != nil {
		if os.Geteuid() == 0 {
			t.Fatalf("round-robin as root: %v", err)
		}
		t.Skipf("round-robin needs privilege: %v", err)
	}
	g.CloseAll()
}

func eachMode(t *testing.T, f func(t *testing.T, mode Mode)) {
	for _, mode := range modes(t) {
		t.Run(mode.String(), func(t *testing.T) { f(t, mode) })
	}
}

// newGroup is a group on addr with n members, each served by an acceptor
// that answers every connection with its member's id and closes it.
func newGroup(t *testing.T, addr string, mode Mode, n int) (*Group, []*Member) {
	t.Helper()
	g, err := New(addr, mode)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.CloseAll() })
	var ms []*Member
	for range n {
		ms = append(ms, add(t, g))
	}
	return g, ms
}

func add(t *testing.T, g *Group) *Member {
	t.Helper()
	m, err := g.Add()
	if err != nil {
		t.Fatal(err)
	}
	serve(t, m)
	return m
}

// serve answers every connection accepted from m with m's id. Its
// listener is a duplicate of m's socket: Group.Close ends its accepts.
func serve(t testing.TB, m *Member) {
	t.Helper()
	ln := listener(t, m)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%d\n", m.ID())
			c.Close()
		}
	}()
}

func listener(t testing.TB, m *Member) net.Listener {
	t.Helper()
	ln, err := net.FileListener(m.File())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// ask makes one connection (from local port from, if not 0) and returns
// the id of the member that answered it.
func ask(addr net.Addr, from int) (int, error) {
	d := net.Dialer{Timeout: 15 * time.Second}
	if from != 0 {
		d.LocalAddr = &net.TCPAddr{IP: addr.(*net.TCPAddr).IP, Port: from}
	}
	c, err := d.Dial("tcp", addr.String())
	if err != nil {
		return -1, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return -1, err
	}
	return strconv.Atoi(line[:len(line)-1])
}

// askAll makes n connections, at once when together (at most 128 in
// flight: more at once overflow loopback's backlog and wait for SYN
// retransmits), else one after another, and counts them by the member
// that answered; any failure fails the test.
func askAll(t *testing.T, g *Group, n int, together bool) map[int]int {
	t.Helper()
	var mu sync.Mutex
	hits := map[int]int{}
	var errs []error
	var wg sync.WaitGroup
	start := make(chan struct{})
	inFlight := make(chan struct{}, 128)
	for range n {
		one := func() {
			<-start
			inFlight <- struct{}{}
			defer func() { <-inFlight }()
			id, err := ask(g.Addr(), 0)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			hits[id]++
		}
		if together {
			wg.Go(one)
		} else {
			close(start)
			one()
			start = make(chan struct{})
		}
	}
	close(start)
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d of %d connections failed: %v", len(errs), n, errors.Join(errs...))
	}
	return hits
}

func ids(ms ...*Member) []int {
	var s []int
	for _, m := range ms {
		s = append(s, m.ID())
	}
	return s
}

func TestRoundRobinExact(t *testing.T) {
	needRoundRobin(t)
	g, ms := newGroup(t, "127.0.0.1:0", RoundRobin, 4)
	if err := g.SetServing(ms...); err != nil {
		t.Fatal(err)
	}
	hits := askAll(t, g, 8, true)
	for _, m := range ms {
		if hits[m.ID()] != 2 {
			t.Errorf("8 connections at once over 4 members: %v, want 2 each", hits)
			break
		}
		if n, err := g.Given(m); err != nil || n != 2 {
			t.Errorf("Given(%v) = %d, %v; want 2", m, n, err)
		}
	}
}

func TestRandomSpread(t *testing.T) {
	g, ms := newGroup(t, "127.0.0.1:0", Random, 4)
	if err := g.SetServing(ms...); err != nil {
		t.Fatal(err)
	}
	hits := askAll(t, g, 400, false)
	for _, m := range ms {
		// 100 expected, σ ≈ 8.7: outside 55..145 is a broken spread.
		if h := hits[m.ID()]; h < 55 || h > 145 {
			t.Errorf("400 connections over 4 members: %v, want about 100 each", hits)
			break
		}
	}
	t.Logf("random spread of 400: %v", hits)
}

func TestSteeredAwayGetsNone(t *testing.T) {
	eachMode(t, func(t *testing.T, mode Mode) {
		g, ms := newGroup(t, "127.0.0.1:0", mode, 4)
		if err := g.SetServing(ms[1], ms[3]); err != nil {
			t.Fatal(err)
		}
		hits := askAll(t, g, 100, true)
		if hits[ms[0].ID()]+hits[ms[2].ID()] != 0 || hits[ms[1].ID()] == 0 || hits[ms[3].ID()] == 0 {
			t.Errorf("serving 1 and 3: %v", hits)
		}
		// A member added later is steered away until named.
		m4 := add(t, g)
		hits = askAll(t, g, 50, true)
		if hits[m4.ID()] != 0 {
			t.Errorf("a new member got connections before SetServing named it: %v", hits)
		}
		if err := g.SetServing(m4); err != nil {
			t.Fatal(err)
		}
		if hits = askAll(t, g, 20, true); hits[m4.ID()] != 20 {
			t.Errorf("serving the new member only: %v", hits)
		}
	})
}

// checkOrder proves the group's order is the kernel's: steering to each
// member alone reaches exactly that member.
func checkOrder(t *testing.T, g *Group) {
	t.Helper()
	for _, m := range g.Members() {
		if err := g.SetServing(m); err != nil {
			t.Fatal(err)
		}
		if hits := askAll(t, g, 5, true); hits[m.ID()] != 5 {
			t.Fatalf("steering to %v alone (order %v): %v", m, ids(g.Members()...), hits)
		}
	}
}

func TestCloseKeepsSteering(t *testing.T) {
	eachMode(t, func(t *testing.T, mode Mode) {
		g, ms := newGroup(t, "127.0.0.1:0", mode, 5)
		if err := g.SetServing(ms...); err != nil {
			t.Fatal(err)
		}
		// Close member 0 while serving: steered away, drained, closed; the
		// last member takes index 0.
		if err := g.SetServing(ms[1:]...); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := g.Drain(ctx, ms[0]); err != nil {
			t.Fatal(err)
		}
		if err := g.Close(ms[0]); err != nil {
			t.Fatal(err)
		}
		if got, want := fmt.Sprint(ids(g.Members()...)), fmt.Sprint(ids(ms[4], ms[1], ms[2], ms[3])); got != want {
			t.Fatalf("order after closing member 0: %s, want %s", got, want)
		}
		hits := askAll(t, g, 100, true)
		if hits[ms[0].ID()] != 0 || len(hits) != 4 {
			t.Errorf("after closing member 0: %v", hits)
		}
		checkOrder(t, g)
		// The last member is the only serving one while another member is
		// closed: it moves, and stays the only one reached.
		if err := g.SetServing(ms[3]); err != nil {
			t.Fatal(err)
		}
		if err := g.Close(ms[1]); err != nil {
			t.Fatal(err)
		}
		if hits := askAll(t, g, 20, true); hits[ms[3].ID()] != 20 {
			t.Errorf("serving %v after it moved: %v", ms[3], hits)
		}
		checkOrder(t, g)
		// Closing a serving member steers away from it first.
		if err := g.SetServing(g.Members()...); err != nil {
			t.Fatal(err)
		}
		if err := g.Close(ms[4]); err != nil {
			t.Fatal(err)
		}
		if hits := askAll(t, g, 40, true); hits[ms[4].ID()] != 0 || len(hits) != 2 {
			t.Errorf("after closing a serving member: %v", hits)
		}
		checkOrder(t, g)
	})
}

// queued waits until m's queue holds n connections.
func queued(t *testing.T, g *Group, m *Member, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		q, err := g.Queue(m)
		if err != nil {
			t.Fatal(err)
		}
		if q == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("queue of %v: %d, want %d", m, q, n)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func TestQueueAndDrain(t *testing.T) {
	eachMode(t, func(t *testing.T, mode Mode) {
		g, err := New("127.0.0.1:0", mode)
		if err != nil {
			t.Fatal(err)
		}
		defer g.CloseAll()
		a, _ := g.Add()
		b := add(t, g)
		if err := g.SetServing(a); err != nil {
			t.Fatal(err)
		}
		// Three connections wait in a's queue: nobody accepts them yet.
		answers := make(chan error, 3)
		for range 3 {
			go func() { _, err := ask(g.Addr(), 0); answers <- err }()
		}
		queued(t, g, a, 3)
		if err := g.SetServing(b); err != nil {
			t.Fatal(err)
		}
		short, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		if err := g.Drain(short, a); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Drain with 3 queued: %v, want a deadline", err)
		}
		drained := make(chan error, 1)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			drained <- g.Drain(ctx, a)
		}()
		serve(t, a) // a's worker accepts what it was given
		if err := <-drained; err != nil {
			t.Fatal(err)
		}
		for range 3 {
			if err := <-answers; err != nil {
				t.Errorf("a connection queued on the drained member: %v", err)
			}
		}
		if err := g.Close(a); err != nil {
			t.Fatal(err)
		}
		if hits := askAll(t, g, 10, true); hits[b.ID()] != 10 {
			t.Errorf("after closing a: %v", hits)
		}
	})
}

// freePort is a TCP port on ip nobody uses now.
func freePort(t *testing.T, ip string) int {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func TestProbeRule(t *testing.T) {
	for _, ip := range []string{"127.0.0.1", "::1"} {
		eachMode(t, func(t *testing.T, mode Mode) {
			g, err := New(net.JoinHostPort(ip, "0"), mode)
			if err != nil {
				t.Skipf("%s: %v", ip, err)
			}
			defer g.CloseAll()
			a, b := add(t, g), add(t, g)
			if err := g.SetServing(a); err != nil {
				t.Fatal(err)
			}
			port := freePort(t, ip)
			if err := g.SetProbe(uint16(port), b); err != nil {
				t.Fatal(err)
			}
			if id, err := ask(g.Addr(), port); err != nil || id != b.ID() {
				t.Errorf("%s: from the probe's port: member %d, %v; want %d", ip, id, err, b.ID())
			}
			if hits := askAll(t, g, 20, true); hits[a.ID()] != 20 {
				t.Errorf("%s: other connections: %v", ip, hits)
			}
			if err := g.ClearProbe(uint16(port)); err != nil {
				t.Fatal(err)
			}
			port2 := freePort(t, ip)
			if id, err := ask(g.Addr(), port2); err != nil || id != a.ID() {
				t.Errorf("%s: after ClearProbe: member %d, %v; want %d", ip, id, err, a.ID())
			}
		})
	}
}

// TestProbeBeforeServing: a probe rule set before the first SetServing
// (a primary probing its first workers) reaches its member, and every
// other connection is still answered (the kernel's hash); SetServing
// keeps the rule.
func TestProbeBeforeServing(t *testing.T) {
	eachMode(t, func(t *testing.T, mode Mode) {
		g, err := New("127.0.0.1:0", mode)
		if err != nil {
			t.Fatal(err)
		}
		defer g.CloseAll()
		a, b, c := add(t, g), add(t, g), add(t, g)
		for range 3 {
			for _, m := range []*Member{a, b, c} {
				port := freePort(t, "127.0.0.1")
				if err := g.SetProbe(uint16(port), m); err != nil {
					t.Fatal(err)
				}
				if id, err := ask(g.Addr(), port); err != nil || id != m.ID() {
					t.Fatalf("before SetServing, from the probe's port: member %d, %v; want %d", id, err, m.ID())
				}
				if err := g.ClearProbe(uint16(port)); err != nil {
					t.Fatal(err)
				}
			}
		}
		if mode == RoundRobin {
			for _, m := range []*Member{a, b, c} {
				if n, err := g.Given(m); err != nil || n != 0 {
					t.Errorf("member %d: given %d, %v after probes alone; want 0 (a probe is not a connection given)", m.ID(), n, err)
				}
			}
		}
		port := freePort(t, "127.0.0.1")
		if err := g.SetProbe(uint16(port), c); err != nil {
			t.Fatal(err)
		}
		if hits := askAll(t, g, 30, true); hits[a.ID()]+hits[b.ID()]+hits[c.ID()] != 30 {
			t.Errorf("other connections before SetServing: %v, want all 30 answered", hits)
		}
		if err := g.SetServing(a); err != nil {
			t.Fatal(err)
		}
		if id, err := ask(g.Addr(), port); err != nil || id != c.ID() {
			t.Errorf("after SetServing, from the probe's port: member %d, %v; want %d", id, err, c.ID())
		}
		if hits := askAll(t, g, 20, true); hits[a.ID()] != 20 {
			t.Errorf("after SetServing: %v, want all 20 at %d", hits, a.ID())
		}
	})
}

func TestSixtyFourMembers(t *testing.T) {
	eachMode(t, func(t *testing.T, mode Mode) {
		g, ms := newGroup(t, "127.0.0.1:0", mode, 64)
		if err := g.SetServing(ms...); err != nil {
			t.Fatal(err)
		}
		n := 128
		if mode == Random {
			n = 64 * 20 // P(some member gets none) ≈ 64·e^-20
		}
		hits := askAll(t, g, n, true)
		for _, m := range ms {
			if h := hits[m.ID()]; h == 0 || (mode == RoundRobin && h != 2) {
				t.Fatalf("%d connections over 64 members: %v", n, hits)
			}
		}
		var odd []*Member
		for i, m := range ms {
			if i%2 == 1 {
				odd = append(odd, m)
			}
		}
		if err := g.SetServing(odd...); err != nil {
			t.Fatal(err)
		}
		// Close a few members; the rest keep being steered right.
		for _, i := range []int{0, 10, 63, 20} {
			if err := g.Close(ms[i]); err != nil {
				t.Fatal(err)
			}
		}
		hits = askAll(t, g, 256, true)
		for i, m := range ms {
			if i%2 == 0 && hits[m.ID()] != 0 || i == 63 && hits[m.ID()] != 0 {
				t.Fatalf("serving the odd members: %v", hits)
			}
		}
		if mode == RoundRobin {
			for _, m := range odd[:31] { // 31 serving: 256 = 8·31 + 8
				if h := hits[m.ID()]; h < 8 || h > 9 {
					t.Fatalf("256 connections over 31 members: %v", hits)
				}
			}
		}
	})
}

func TestBadInput(t *testing.T) {
	for _, addr := range []string{"nonsense", "127.0.0.1:http-nope", "256.1.1.1:80"} {
		if _, err := New(addr, Random); err == nil {
			t.Errorf("New(%q): no error", addr)
		}
	}
	if _, err := ParseMode("fair"); err == nil || err.Error() != `unknown balance mode "fair": use round-robin, random or shared` {
		t.Errorf("ParseMode: %v", err)
	}
	g, ms := newGroup(t, "127.0.0.1:0", Random, 1)
	other, oms := newGroup(t, "127.0.0.1:0", Random, 1)
	_ = other
	if err := g.SetServing(oms[0]); !errors.Is(err, ErrNotMember) {
		t.Errorf("SetServing of another group's member: %v", err)
	}
	if err := g.SetServing(); !errors.Is(err, ErrNoServing) {
		t.Errorf("SetServing of none: %v", err)
	}
	b := add(t, g)
	if err := g.SetServing(ms[0]); err != nil {
		t.Fatal(err)
	}
	if err := g.Close(ms[0]); !errors.Is(err, ErrNoServing) {
		t.Errorf("closing the only serving member: %v", err)
	}
	if err := g.Close(b); err != nil {
		t.Fatal(err)
	}
	if err := g.Close(b); !errors.Is(err, ErrNotMember) {
		t.Errorf("closing twice: %v", err)
	}
}

func TestDetect(t *testing.T) {
	mode, why := Detect()
	t.Logf("Detect: %v: %s", mode, why)
	if os.Geteuid() == 0 && mode != RoundRobin {
		t.Errorf("as root: %v (%s), want round-robin", mode, why)
	}
	if mode == Shared {
		t.Errorf("no steering at all: %s", why)
	}
}

// TestRoundRobinMigratesOnClose: closing a member whose queue still holds
// connections moves them to a serving member (SELECT_OR_MIGRATE) instead
// of resetting them.
func TestRoundRobinMigratesOnClose(t *testing.T) {
	needRoundRobin(t)
	g, err := New("127.0.0.1:0", RoundRobin)
	if err != nil {
		t.Fatal(err)
	}
	defer g.CloseAll()
	if !g.ebpf.migrate {
		t.Skip("the kernel has no BPF_SK_REUSEPORT_SELECT_OR_MIGRATE (5.14)")
	}
	a, _ := g.Add()
	b := add(t, g)
	if err := g.SetServing(a); err != nil {
		t.Fatal(err)
	}
	answers := make(chan int, 3)
	for range 3 {
		go func() {
			id, err := ask(g.Addr(), 0)
			if err != nil {
				t.Errorf("a connection queued on the closed member: %v", err)
			}
			answers <- id
		}()
	}
	queued(t, g, a, 3)
	if err := g.SetServing(b); err != nil {
		t.Fatal(err)
	}
	if err := g.Close(a); err != nil { // no Drain: a's queue is full
		t.Fatal(err)
	}
	for range 3 {
		if id := <-answers; id != b.ID() {
			t.Errorf("a queued connection answered by %d, want %d", id, b.ID())
		}
	}
}

func TestShared(t *testing.T) {
	g, err := New("127.0.0.1:0", Shared)
	if err != nil {
		t.Fatal(err)
	}
	defer g.CloseAll()
	a, _ := g.Add()
	b, _ := g.Add()
	if err := g.SetServing(a); err != nil {
		t.Fatal(err)
	}
	answers := make(chan error, 2)
	for range 2 {
		go func() { _, err := ask(g.Addr(), 0); answers <- err }()
	}
	queued(t, g, b, 2) // one queue, whichever member asks
	if err := g.Drain(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	if err := g.Close(a); err != nil {
		t.Fatal(err)
	}
	serve(t, b) // closing a duplicate reset nothing: b accepts both
	for range 2 {
		if err := <-answers; err != nil {
			t.Error(err)
		}
	}
	if err := g.SetProbe(1, b); !errors.Is(err, ErrUnsupported) {
		t.Errorf("SetProbe in shared mode: %v", err)
	}
}

// TestUnprivileged runs the Random mode tests again as uid 65534: classic
// BPF needs no privilege, and round-robin is reported as unavailable.
func TestUnprivileged(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("already unprivileged: the other tests ran so")
	}
	dir, err := os.MkdirTemp("", "steer-unprivileged")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	exe, err := os.ReadFile("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	bin := dir + "/steer.test"
	if err := os.WriteFile(bin, exe, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-test.count=1", "-test.v",
		"-test.run=^(TestRandomSpread|TestSteeredAwayGetsNone|TestCloseKeepsSteering|TestQueueAndDrain|TestProbeRule|TestProbeBeforeServing|TestSixtyFourMembers|TestExportImport|TestImportInAnotherProcess|TestShared|TestDetect)$")
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("as uid 65534: %v\n%s", err, out)
	}
	for _, want := range []string{"--- PASS: TestCloseKeepsSteering/random", "--- PASS: TestSixtyFourMembers/random", "round-robin not tested",
		"Detect: random: random steering with classic BPF; no round-robin: steer: round-robin needs eBPF, which needs CAP_BPF or CAP_SYS_ADMIN: operation not permitted\n"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("as uid 65534, no %q in:\n%s", want, out)
		}
	}
}

// TestChurnUnderLoad rolls a group's members over and over while clients
// connect without pause: no connection fails (none reset), and none
// reaches the member that never serves, whose index moves as others
// close.
func TestChurnUnderLoad(t *testing.T) {
	eachMode(t, func(t *testing.T, mode Mode) {
		g, ms := newGroup(t, "127.0.0.1:0", mode, 5)
		g.Settle = 200 * time.Millisecond
		// The idle member sits among the serving ones: every close before
		// it moves another member into an index below or past it.
		idle, serving := ms[2], []*Member{ms[0], ms[1], ms[3], ms[4]}
		if err := g.SetServing(serving...); err != nil {
			t.Fatal(err)
		}
		stop := make(chan struct{})
		var mu sync.Mutex
		hits := map[int]int{}
		var errs []error
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				for i := 0; i < 100_000; i++ { // bounded; stop ends it sooner
					select {
					case <-stop:
						return
					default:
					}
					id, err := ask(g.Addr(), 0)
					mu.Lock()
					if err != nil {
						errs = append(errs, err)
					} else {
						hits[id]++
					}
					mu.Unlock()
				}
			})
		}
		for range 12 {
			next := add(t, g)
			old := serving[0]
			serving = append(serving[1:], next)
			if err := g.SetServing(serving...); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := g.Drain(ctx, old)
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			if err := g.Close(old); err != nil {
				t.Fatal(err)
			}
		}
		close(stop)
		wg.Wait()
		total := 0
		for _, n := range hits {
			total += n
		}
		t.Logf("%d connections across 12 roll-overs, %d members reached", total, len(hits))
		if len(errs) > 0 {
			t.Errorf("%d connections failed: %v", len(errs), errors.Join(errs[:min(len(errs), 5)]...))
		}
		if hits[idle.ID()] != 0 {
			t.Errorf("the member that never serves got %d connections", hits[idle.ID()])
		}
		if total == 0 {
			t.Error("no connection made")
		}
	})
}

// TestRandomCloseWhenTheLastAloneServes: closing a member while the last
// one is the only serving member, in a group of more: the last member
// must not move while the program names its index, or connections
// arriving before the next program would be spread by the kernel's hash
// over members that do not serve.
func TestRandomCloseWhenTheLastAloneServes(t *testing.T) {
	g, ms := newGroup(t, "127.0.0.1:0", Random, 4) // idle, idle, old, new
	if err := g.SetServing(ms[3]); err != nil {
		t.Fatal(err)
	}
	addr := g.Addr()
	var during []int
	testHookClosed = func() {
		for range 30 {
			id, err := ask(addr, 0)
			if err != nil {
				t.Errorf("between the close and the next program: %v", err)
			}
			during = append(during, id)
		}
	}
	defer func() { testHookClosed = func() {} }()
	if err := g.Close(ms[2]); err != nil {
		t.Fatal(err)
	}
	testHookClosed = func() {}
	for _, id := range during {
		if id != ms[3].ID() {
			t.Fatalf("between the close and the next program, connections reached %v; only %d serves", during, ms[3].ID())
		}
	}
	if got := fmt.Sprint(ids(g.Members()...)); got != fmt.Sprint(ids(ms[0], ms[1], ms[3])) {
		t.Errorf("members after the close: %s", got)
	}
	// A hand-over keeps the spare in its place.
	g = handOver(t, g)
	if n := g.spares(); n != 1 {
		t.Fatalf("%d spares after the hand-over, want 1", n)
	}
	// The spare that took the closed member's index goes at the next
	// change that allows it: here a new member is added.
	m := add(t, g)
	if n := g.spares(); n != 0 {
		t.Errorf("%d spares left after Add", n)
	}
	if hits := askAll(t, g, 20, true); len(hits) != 1 || hits[m.ID()]+hits[ms[0].ID()]+hits[ms[1].ID()] != 0 {
		t.Errorf("after Add: %v", hits)
	}
	checkOrder(t, g)
}
