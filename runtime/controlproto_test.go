//go:build linux

package runtime

import (
	"bufio"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/handoff-dev/handoff/internal/testutil"
	"github.com/handoff-dev/handoff/workerpool"
)

func TestParseControlRequest(t *testing.T) {
	good := map[string]ControlRequest{
		`{"op":"status"}`:                 {Op: "status"},
		`{"op":"reload"}`:                 {Op: "reload"},
		`{"op":"rollback"}`:               {Op: "rollback"},
		`{"op":"stop"}`:                   {Op: "stop"},
		`{"op":"scale","workers":4}`:      {Op: "scale", Workers: 4},
		`{"op":"scale","delta":-1}`:       {Op: "scale", Delta: -1},
		`  {"op":"status","future":true}`: {Op: "status"},
	}
	for line, want := range good {
		got, err := ParseControlRequest([]byte(line))
		if err != nil || got != want {
			t.Errorf("%s: got %+v, %v; want %+v", line, got, err, want)
		}
	}
	bad := map[string]string{
		``:                                     "not a JSON request object",
		`garbage`:                              "not a JSON request object",
		`[1,2]`:                                "not a JSON request object",
		`{"op":5}`:                             "not a JSON request object",
		`{}`:                                   "no op",
		`{"op":"bogus"}`:                       `unknown op "bogus"`,
		`{"op":"status"}{"op":"stop"}`:         "more than one JSON value",
		`{"op":"scale"}`:                       "from 1 to",
		`{"op":"scale","workers":0}`:           "from 1 to",
		`{"op":"scale","workers":100000}`:      "from 1 to",
		`{"op":"scale","workers":2,"delta":1}`: "not both",
		`{"op":"scale","delta":100000}`:        "out of range",
		`{"op":"stop","workers":3}`:            "takes no workers",
		`{"op":"rollback","delta":1}`:          "rollback takes no workers",
		`{"op":"scale","workers":1e400}`:       "not a JSON request object",
		`{"op":"` + strings.Repeat("x", 5000) + `"}`: "longer than",
	}
	for line, want := range bad {
		_, err := ParseControlRequest([]byte(line))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%.60s: error %v, want one saying %q", line, err, want)
		}
	}
}

// FuzzParseControlRequest: the decoder never panics, and what it accepts
// is a valid request that survives a round trip.
func FuzzParseControlRequest(f *testing.F) {
	for _, seed := range []string{
		`{"op":"status"}`, `{"op":"reload"}`, `{"op":"stop"}`, `{"op":"scale","workers":4}`,
		`{"op":"scale","delta":-1}`, `{"op":"scale","delta":1,"workers":2}`, `{"op":"bogus"}`, `{}`, `null`,
		`[]`, `{"op":"status"} trailing`, "\x00\xff", `{"op":"scale","workers":-9223372036854775808}`,
		`{"op":"\u0000"}`, `{"op":"status","op":"stop"}`, `{"op":"rollback"}`, `{"op":"rollback","workers":1}`,
		`{"op":"Rollback"}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		r, err := ParseControlRequest(line)
		if err != nil {
			if r != (ControlRequest{}) {
				t.Fatalf("error %v with a non-zero request %+v", err, r)
			}
			return
		}
		switch r.Op {
		case "status", "reload", "rollback", "stop":
			if r.Workers != 0 || r.Delta != 0 {
				t.Fatalf("accepted %+v", r)
			}
		case "scale":
			if (r.Workers == 0) == (r.Delta == 0) || r.Workers < 0 || r.Workers > workerpool.MaxSize ||
				r.Delta < -workerpool.MaxSize || r.Delta > workerpool.MaxSize {
				t.Fatalf("accepted %+v", r)
			}
		default:
			t.Fatalf("accepted op %q", r.Op)
		}
		b, _ := json.Marshal(r)
		again, err := ParseControlRequest(b)
		if err != nil || again != r {
			t.Fatalf("round trip of %+v: %+v, %v", r, again, err)
		}
	})
}

func TestReadLineIsBounded(t *testing.T) {
	br := bufio.NewReaderSize(strings.NewReader(strings.Repeat("a", MaxControlLine+10)+"\n"), 64)
	if _, err := readLine(br, MaxControlLine); !errors.Is(err, errLineTooLong) {
		t.Fatalf("long line: %v", err)
	}
	br = bufio.NewReaderSize(strings.NewReader("{\"op\":\"status\"}\r\nnext\n"), 16)
	line, err := readLine(br, MaxControlLine)
	if err != nil || string(line) != `{"op":"status"}` {
		t.Fatalf("got %q, %v", line, err)
	}
}

func TestDefaultControlPath(t *testing.T) {
	t.Setenv(EnvControlDir, "/run/x")
	if got := DefaultControlPath("tcp", "127.0.0.1:8080"); got != "/run/x/tcp-127.0.0.1:8080.sock" {
		t.Errorf("tcp: %s", got)
	}
	a := DefaultControlPath("unix", "/srv/a/app.sock")
	b := DefaultControlPath("unix", "/srv/b/app.sock")
	if a == b || !strings.HasPrefix(filepath.Base(a), "unix-app.sock-") {
		t.Errorf("unix: %s and %s", a, b)
	}
	t.Setenv(EnvControlDir, "/"+strings.Repeat("d", 80))
	if got := DefaultControlPath("tcp", "[2001:db8::1234:5678]:65535"); len(got) > maxSocketPath {
		t.Errorf("long: %d bytes: %s", len(got), got)
	}
}

func TestPrepareControlDir(t *testing.T) {
	base := t.TempDir()
	// Created, with its parents, private.
	dir := filepath.Join(base, "a", "b")
	if err := prepareControlDir(dir, true); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("created: %v, %v", fi.Mode(), err)
	}
	// The default directory is made private again; one named by
	// --control is left as it is.
	os.Chmod(dir, 0o755)
	if err := prepareControlDir(dir, false); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o755 {
		t.Fatalf("--control directory changed to %v", fi.Mode())
	}
	if err := prepareControlDir(dir, true); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Fatalf("default directory left %v", fi.Mode())
	}
	file := filepath.Join(base, "file")
	os.WriteFile(file, nil, 0o600)
	if err := prepareControlDir(file, false); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("a file: %v", err)
	}
	if os.Geteuid() != 0 {
		testutil.Need(t, "giving a directory to another user needs root")
	}
	// Someone else's default directory is refused.
	if err := os.Chown(dir, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if err := prepareControlDir(dir, true); err == nil || !strings.Contains(err.Error(), "belongs to uid 65534") {
		t.Fatalf("another user's directory: %v", err)
	}
}

// TestPrepareControlDirSymlink: a symlink in place of the default
// directory (another user's, planted where the primary will look) is
// refused, and what it points to is left as it was.
func TestPrepareControlDirSymlink(t *testing.T) {
	victim, link := testutil.PlantSymlink(t, "handoff-0")
	base := filepath.Dir(link)
	err := prepareControlDir(link, true)
	if err == nil || !strings.Contains(err.Error(), "is a symbolic link") {
		t.Errorf("a symlink for the default directory: %v, want an error saying it is a symbolic link", err)
	}
	if fi, err := os.Stat(victim); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("the directory the link points to: mode %v (%v), want 0755 as it was", fi.Mode().Perm(), err)
	}
	// A symlink to a file, and a dangling one: refused too, nothing made.
	os.Remove(link)
	os.Symlink(filepath.Join(base, "nowhere"), link)
	if err := prepareControlDir(link, true); err == nil || !strings.Contains(err.Error(), "is a symbolic link") {
		t.Errorf("a dangling symlink: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(base, "nowhere")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a dangling symlink's target was created: %v", err)
	}
}
