//go:build linux

package control

import (
	"bufio"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/handoff-dev/handoff/workerpool"
)

func TestParseRequest(t *testing.T) {
	good := map[string]Request{
		`{"op":"status"}`:                 {Op: "status"},
		`{"op":"reload"}`:                 {Op: "reload"},
		`{"op":"rollback"}`:               {Op: "rollback"},
		`{"op":"stop"}`:                   {Op: "stop"},
		`{"op":"scale","workers":4}`:      {Op: "scale", Workers: 4},
		`{"op":"scale","delta":-1}`:       {Op: "scale", Delta: -1},
		`  {"op":"status","future":true}`: {Op: "status"},
	}
	for line, want := range good {
		got, err := ParseRequest([]byte(line))
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
		_, err := ParseRequest([]byte(line))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%.60s: error %v, want one saying %q", line, err, want)
		}
	}
}

// FuzzParseRequest: the decoder never panics, and what it accepts
// is a valid request that survives a round trip.
func FuzzParseRequest(f *testing.F) {
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
		r, err := ParseRequest(line)
		if err != nil {
			if r != (Request{}) {
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
		again, err := ParseRequest(b)
		if err != nil || again != r {
			t.Fatalf("round trip of %+v: %+v, %v", r, again, err)
		}
	})
}

func TestReadLineIsBounded(t *testing.T) {
	br := bufio.NewReaderSize(strings.NewReader(strings.Repeat("a", MaxLine+10)+"\n"), 64)
	if _, err := readLine(br, MaxLine); !errors.Is(err, errLineTooLong) {
		t.Fatalf("long line: %v", err)
	}
	br = bufio.NewReaderSize(strings.NewReader("{\"op\":\"status\"}\r\nnext\n"), 16)
	line, err := readLine(br, MaxLine)
	if err != nil || string(line) != `{"op":"status"}` {
		t.Fatalf("got %q, %v", line, err)
	}
}
