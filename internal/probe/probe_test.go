package probe

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	for _, c := range []struct {
		v, host string
		want    Spec
		err     string
	}{
		{"http:/healthz", "localhost", Spec{Path: "/healthz", Host: "localhost"}, ""},
		{"https:/up?full=1", "api.example", Spec{TLS: true, Path: "/up?full=1", Host: "api.example"}, ""},
		{"http:healthz", "localhost", Spec{}, "PATH starting with /"},
		{"tcp:/x", "localhost", Spec{}, "use http:PATH or https:PATH"},
		{"http:/a b", "localhost", Spec{}, "use http:PATH"},
		{"http:/x", "", Spec{}, "--ready-host"},
	} {
		got, err := Parse("--ready", c.v, c.host)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("Parse(%q, %q): %v, want an error saying %q", c.v, c.host, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("Parse(%q, %q) = %+v, %v; want %+v", c.v, c.host, got, err, c.want)
		}
		if got.String() != strings.SplitN(c.v, "?", 2)[0] && !strings.Contains(c.v, "?") {
			t.Errorf("String() = %q, want %q", got.String(), c.v)
		}
	}
}

func probeURL(t *testing.T, s Spec, addr string, timeout time.Duration) Result {
	t.Helper()
	begin := time.Now()
	c, err := net.DialTimeout("tcp", addr, timeout)
	return Do(context.Background(), s, c, err, begin, timeout)
}

func TestDo(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Host != "probe.test" || r.Header.Get("User-Agent") != "handoff-probe" {
			w.WriteHeader(400)
			return
		}
		switch r.URL.Path {
		case "/ok":
			w.Write([]byte("fine\nsecond line\n"))
		case "/warm":
			w.WriteHeader(503)
			w.Write([]byte("  warming up  \n"))
		case "/slow":
			time.Sleep(time.Second)
		}
	})
	plain := httptest.NewServer(h)
	defer plain.Close()
	secure := httptest.NewTLSServer(h)
	defer secure.Close()
	for _, c := range []struct {
		srv  *httptest.Server
		tls  bool
		path string
		ok   bool
		want string
	}{
		{plain, false, "/ok", true, "200 fine"},
		{plain, false, "/warm", false, "503 warming up"},
		{plain, false, "/slow", false, "timeout after 200ms"},
		{secure, true, "/ok", true, "200 fine"},
		{secure, false, "/ok", false, "400 Client sent an HTTP request to an HTTPS server."},
	} {
		r := probeURL(t, Spec{TLS: c.tls, Path: c.path, Host: "probe.test"}, c.srv.Listener.Addr().String(), 200*time.Millisecond)
		if r.OK() != c.ok || r.String() != c.want {
			t.Errorf("%s (tls %v): %q ok=%v, want %q ok=%v", c.path, c.tls, r, r.OK(), c.want, c.ok)
		}
		if r.At.IsZero() || r.Took <= 0 {
			t.Errorf("%s: At %v Took %v", c.path, r.At, r.Took)
		}
	}
	// Nothing listens there any more.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	if r := probeURL(t, Spec{Path: "/", Host: "x"}, addr, time.Second); r.OK() || r.String() != "connection refused" {
		t.Errorf("closed port: %q", r)
	}
}
