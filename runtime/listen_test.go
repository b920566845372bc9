package runtime

import (
	"os"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if os.Getenv(envTestNoPrimary) == "1" {
		os.Exit(noPrimaryApp())
	}
	goleak.VerifyTestMain(m)
}

func TestParseListen(t *testing.T) {
	path107 := "/" + strings.Repeat("p", 106)
	for _, c := range []struct {
		in   string
		i    int
		want Listener
		err  string // a substring of the error; empty: no error
	}{
		{in: ":8080", want: Listener{"listener0", "tcp", ":8080"}},
		{in: "127.0.0.1:8080", i: 2, want: Listener{"listener2", "tcp", "127.0.0.1:8080"}},
		{in: "[::1]:0", want: Listener{"listener0", "tcp", "[::1]:0"}},
		{in: "localhost:65535", want: Listener{"listener0", "tcp", "localhost:65535"}},
		{in: "web=:8080", i: 1, want: Listener{"web", "tcp", ":8080"}},
		{in: "web-2.x_y=0.0.0.0:80", want: Listener{"web-2.x_y", "tcp", "0.0.0.0:80"}},
		{in: strings.Repeat("n", 255) + "=:80", want: Listener{strings.Repeat("n", 255), "tcp", ":80"}},
		{in: "unix:/run/app.sock", i: 3, want: Listener{"listener3", "unix", "/run/app.sock"}},
		{in: "admin=unix:/run/admin.sock", want: Listener{"admin", "unix", "/run/admin.sock"}},
		{in: "s=unix:/tmp/a=b.sock", want: Listener{"s", "unix", "/tmp/a=b.sock"}},
		{in: "unix:/tmp/a=b.sock", want: Listener{"listener0", "unix", "/tmp/a=b.sock"}},
		{in: "unix:" + path107, want: Listener{"listener0", "unix", path107}},

		// Names.
		{in: "=:8080", err: "the name before '=' must be 1-255 characters"},
		// A ':' before '=' makes it an address, not a name.
		{in: "a:b=:8080", err: "not HOST:PORT or unix:PATH"},
		{in: "a b=:8080", err: "without spaces"},
		{in: "a\tb=:8080", err: "without spaces"},
		{in: strings.Repeat("n", 256) + "=:80", err: "1-255 characters"},
		// Unix sockets.
		{in: "unix:", err: "unix: needs a socket path"},
		{in: "name=unix:", err: "unix: needs a socket path"},
		{in: "unix:" + path107 + "x", err: "at most 107 bytes"},
		// Not HOST:PORT.
		{in: "", err: "not HOST:PORT or unix:PATH"},
		{in: "8080", err: "not HOST:PORT or unix:PATH"},
		{in: "::1:8080", err: "not HOST:PORT or unix:PATH"},
		{in: "[::1:8080", err: "not HOST:PORT or unix:PATH"},
		{in: "tcp://:8080", err: "not HOST:PORT"},
		// Ports.
		{in: ":", err: `port "" is not a number from 0 to 65535`},
		{in: ":65536", err: `port "65536" is not a number`},
		{in: ":99999", err: `port "99999"`},
		{in: ":-1", err: `port "-1"`},
		{in: ":http", err: `port "http"`},
		{in: "127.0.0.1:8o8o", err: `port "8o8o"`},
		// Hosts: names that cannot be resolved fail without a lookup over
		// the network (an empty label is not a domain name).
		{in: "a..b:80", err: `unknown host "a..b"`},
		{in: "host..example.com:80", err: "unknown host"},
	} {
		got, err := ParseListen(c.in, c.i)
		if c.err != "" {
			if err == nil {
				t.Errorf("ParseListen(%q) = %+v, want an error", c.in, got)
				continue
			}
			if !strings.Contains(err.Error(), c.err) || !strings.HasPrefix(err.Error(), "--listen ") || strings.Contains(err.Error(), "\n") {
				t.Errorf("ParseListen(%q): %v, want one line with %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("ParseListen(%q, %d) = %+v, %v; want %+v", c.in, c.i, got, err, c.want)
		}
	}
}
