// Package probe is handoff's HTTP probe: one GET over a connection the
// caller has opened (runtime opens it through one worker's own socket),
// and what came of it, as status and metrics show it.
package probe

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// Spec is an HTTP probe: --ready http:PATH, --health https:PATH.
type Spec struct {
	// TLS: https:PATH, without verification of the worker's certificate.
	TLS bool
	// Path is the request's path (and query), starting with /.
	Path string
	// Host is the Host header (and the TLS server name).
	Host string
}

// Parse reads "http:PATH" or "https:PATH", PATH starting with /; host is
// the Host header. flagName names the flag in the error.
func Parse(flagName, v, host string) (Spec, error) {
	scheme, path, _ := strings.Cut(v, ":")
	if (scheme != "http" && scheme != "https") || !strings.HasPrefix(path, "/") || strings.ContainsAny(path, " \r\n") {
		return Spec{}, fmt.Errorf("%s %q: use http:PATH or https:PATH with PATH starting with /, e.g. http:/healthz", flagName, v)
	}
	if host == "" || strings.ContainsAny(host, " /\r\n") {
		return Spec{}, fmt.Errorf("--ready-host %q: give a host name such as localhost", host)
	}
	return Spec{TLS: scheme == "https", Path: path, Host: host}, nil
}

// String is the flag's form, e.g. http:/healthz.
func (s Spec) String() string {
	if s.TLS {
		return "https:" + s.Path
	}
	return "http:" + s.Path
}

// Result is what one probe found.
type Result struct {
	At   time.Time     // when it began
	Took time.Duration // until the answer, or the failure
	// Status is the HTTP status; 0 when none came (Err says why).
	Status int
	// Line is the first line of the body (at most 120 bytes).
	Line string
	// Err is why no status came: "timeout after 2s", "connection
	// refused", …; "" when one did.
	Err string
}

// OK says whether the probe passed: a 2xx status.
func (r Result) OK() bool { return r.Err == "" && r.Status >= 200 && r.Status <= 299 }

// String says in a few words what came back: "200", "503 warming up",
// "timeout after 2s".
func (r Result) String() string {
	switch {
	case r.Err != "":
		return r.Err
	case r.Line != "":
		return fmt.Sprintf("%d %s", r.Status, r.Line)
	default:
		return fmt.Sprint(r.Status)
	}
}

// maxLine bounds Result.Line.
const maxLine = 120

// Do sends s's GET on conn, which it closes, and reads the answer's
// status and first body line, all within timeout (and ctx). dialErr, if
// not nil, is the failure to open conn: Do then only reports it.
func Do(ctx context.Context, s Spec, conn net.Conn, dialErr error, begin time.Time, timeout time.Duration) (r Result) {
	r.At = begin
	defer func() { r.Took = time.Since(begin) }()
	if dialErr != nil {
		r.Err = describe(dialErr, timeout)
		return r
	}
	defer conn.Close()
	deadline := begin.Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if s.TLS {
		tc := tls.Client(conn, &tls.Config{ServerName: s.Host, InsecureSkipVerify: true})
		if err := tc.Handshake(); err != nil {
			r.Err = "tls: " + describe(err, timeout)
			return r
		}
		conn = tc
	}
	req, err := http.NewRequest(http.MethodGet, "http://"+s.Host+s.Path, nil)
	if err != nil {
		r.Err = err.Error()
		return r
	}
	req.Header.Set("User-Agent", "handoff-probe")
	req.Close = true
	if err := req.Write(conn); err != nil {
		r.Err = describe(err, timeout)
		return r
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		r.Err = describe(err, timeout)
		return r
	}
	defer resp.Body.Close()
	r.Status = resp.StatusCode
	head, _ := io.ReadAll(io.LimitReader(resp.Body, 4*maxLine))
	line, _, _ := strings.Cut(string(head), "\n")
	line = strings.TrimSpace(line)
	if len(line) > maxLine {
		line = line[:maxLine]
	}
	r.Line = strings.ToValidUTF8(line, "?")
	return r
}

// describe names a probe's failure in a few words.
func describe(err error, timeout time.Duration) string {
	var ne net.Error
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return fmt.Sprintf("timeout after %s", timeout)
	case errors.Is(err, context.Canceled):
		return "cancelled"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed with no answer"
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		var se *os.SyscallError
		if errors.As(op.Err, &se) {
			return se.Err.Error()
		}
		return op.Err.Error()
	}
	return err.Error()
}
