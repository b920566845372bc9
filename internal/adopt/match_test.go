package adopt

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

func targets(t *testing.T, ls ...Listener) []target {
	t.Helper()
	var ts []target
	for _, l := range ls {
		tg, ok := parseTarget(l, "/srv/app")
		if !ok {
			t.Fatalf("parseTarget(%+v) failed", l)
		}
		ts = append(ts, tg)
	}
	return ts
}

func tcp(s string) Addr {
	ap := netip.MustParseAddrPort(s)
	return Addr{IP: ap.Addr(), Port: int(ap.Port())}
}

func TestMatch(t *testing.T) {
	loop := targets(t, Listener{Name: "web", Network: "tcp", Addr: "127.0.0.1:3000"})
	for _, tc := range []struct {
		name string
		ts   []target
		a    Addr
		want int
	}{
		// The program's wildcard adopts the operator's address.
		{"[::]:3000 adopts 127.0.0.1:3000", loop, tcp("[::]:3000"), 0},
		{"0.0.0.0:3000 adopts 127.0.0.1:3000", loop, tcp("0.0.0.0:3000"), 0},
		{"127.0.0.1:3000 adopts 127.0.0.1:3000", loop, tcp("127.0.0.1:3000"), 0},
		{"[::ffff:127.0.0.1]:3000 adopts 127.0.0.1:3000", loop, tcp("[::ffff:127.0.0.1]:3000"), 0},
		{"another port runs", loop, tcp("[::]:3001"), -1},
		{"port 0 runs", loop, tcp("127.0.0.1:0"), -1},
		{"port 0 on the wildcard runs", loop, tcp("[::]:0"), -1},
		{"another host runs", loop, tcp("10.0.0.1:3000"), -1},
		{"[::1] is not 127.0.0.1", loop, tcp("[::1]:3000"), -1},
		{"a unix path is not a port", loop, Addr{Unix: true, Path: "/srv/app/3000"}, -1},
		// The operator's wildcard adopts the program's address.
		{"127.0.0.1:3000 adopts :3000", targets(t, Listener{Network: "tcp", Addr: "[::]:3000"}), tcp("127.0.0.1:3000"), 0},
		{"[::]:3000 adopts 0.0.0.0:3000", targets(t, Listener{Network: "tcp", Addr: "0.0.0.0:3000"}), tcp("[::]:3000"), 0},
		{"[::]:3000 adopts :3000 given as such", targets(t, Listener{Network: "tcp", Addr: ":3000"}), tcp("[::]:3000"), 0},
		// The same host wins over a wildcard, then the order.
		{"exact host first", targets(t,
			Listener{Network: "tcp", Addr: "[::]:3000"},
			Listener{Network: "tcp", Addr: "127.0.0.1:3000"}), tcp("127.0.0.1:3000"), 1},
		{"exact wildcard first", targets(t,
			Listener{Network: "tcp", Addr: "127.0.0.1:3000"},
			Listener{Network: "tcp", Addr: "[::]:3000"}), tcp("0.0.0.0:3000"), 1},
		{"wildcard program: the first on the port", targets(t,
			Listener{Network: "tcp", Addr: "127.0.0.1:8080"},
			Listener{Network: "tcp", Addr: "127.0.0.1:3000"},
			Listener{Network: "tcp", Addr: "[::1]:3000"}), tcp("[::]:3000"), 1},
		{"second listener by host", targets(t,
			Listener{Network: "tcp", Addr: "127.0.0.1:3000"},
			Listener{Network: "tcp", Addr: "[::1]:3000"}), tcp("[::1]:3000"), 1},
		// Unix: the same path (relative ones resolved), or abstract name.
		{"unix path", targets(t, Listener{Network: "unix", Addr: "/run/app.sock"}), Addr{Unix: true, Path: "/run/app.sock"}, 0},
		{"unix relative listener", targets(t, Listener{Network: "unix", Addr: "app.sock"}), Addr{Unix: true, Path: "/srv/app/app.sock"}, 0},
		{"unix other path", targets(t, Listener{Network: "unix", Addr: "/run/app.sock"}), Addr{Unix: true, Path: "/run/other.sock"}, -1},
		{"unix abstract", targets(t, Listener{Network: "unix", Addr: "@app"}), Addr{Unix: true, Abstract: true, Path: "app"}, 0},
		{"abstract is not a path", targets(t, Listener{Network: "unix", Addr: "@app"}), Addr{Unix: true, Path: "app"}, -1},
		{"a port is not a unix path", targets(t, Listener{Network: "unix", Addr: "/run/3000"}), tcp("[::]:3000"), -1},
	} {
		if got := match(tc.ts, tc.a); got != tc.want {
			t.Errorf("%s: match(%s) = %d, want %d", tc.name, tc.a, got, tc.want)
		}
	}
}

func TestParseTargetRejects(t *testing.T) {
	for _, l := range []Listener{
		{Network: "tcp", Addr: "127.0.0.1"},
		{Network: "tcp", Addr: "127.0.0.1:0"},
		{Network: "tcp", Addr: "localhost:80"},
		{Network: "unix", Addr: ""},
	} {
		if _, ok := parseTarget(l, "/"); ok {
			t.Errorf("parseTarget(%+v) accepted", l)
		}
	}
}

func TestParseSockaddr(t *testing.T) {
	in4 := make([]byte, 16)
	binary.NativeEndian.PutUint16(in4, afInet)
	binary.BigEndian.PutUint16(in4[2:], 3000)
	copy(in4[4:], []byte{127, 0, 0, 1})
	in6 := make([]byte, 28)
	binary.NativeEndian.PutUint16(in6, afInet6)
	binary.BigEndian.PutUint16(in6[2:], 443)
	copy(in6[8:], netip.MustParseAddr("::ffff:10.1.2.3").AsSlice())
	un := append(binary.NativeEndian.AppendUint16(nil, afUnix), "/run/app.sock\x00garbage"...)
	abs := append(binary.NativeEndian.AppendUint16(nil, afUnix), "\x00name"...)
	other := binary.NativeEndian.AppendUint16(make([]byte, 0, 16), 16) // AF_NETLINK
	for _, tc := range []struct {
		b    []byte
		want Addr
		ok   bool
	}{
		{in4, Addr{IP: netip.MustParseAddr("127.0.0.1"), Port: 3000}, true},
		{in4[:6], Addr{}, false},
		{in6, Addr{IP: netip.MustParseAddr("10.1.2.3"), Port: 443}, true},
		{in6[:20], Addr{}, false},
		{un, Addr{Unix: true, Path: "/run/app.sock"}, true},
		{abs, Addr{Unix: true, Abstract: true, Path: "name"}, true},
		{un[:2], Addr{}, false}, // autobind
		{append(other, make([]byte, 10)...), Addr{}, false},
		{nil, Addr{}, false},
	} {
		got, ok := parseSockaddr(tc.b)
		if ok != tc.ok || (ok && got != tc.want) {
			t.Errorf("parseSockaddr(%x) = %+v, %v; want %+v, %v", tc.b, got, ok, tc.want, tc.ok)
		}
	}
}

func TestEnv(t *testing.T) {
	for _, tc := range []struct {
		n  int
		tr Traps
	}{{5, Traps{}}, {7, Traps{Unlink: true}}, {8, Traps{Guard: true}}, {9, Traps{Unlink: true, Guard: true}}} {
		kv := Env(tc.n, tc.tr)
		fd, tr, err := ParseEnv(kv[len(EnvFD)+1:])
		if err != nil || fd != tc.n || tr != tc.tr {
			t.Errorf("ParseEnv(Env(%d, %+v) = %q) = %d, %+v, %v", tc.n, tc.tr, kv, fd, tr, err)
		}
	}
	for _, bad := range []string{"", "x", "1", "5,other", "5,unlink,", "5,guard,x"} {
		if _, _, err := ParseEnv(bad); err == nil {
			t.Errorf("ParseEnv(%q) accepted", bad)
		}
	}
}
