package control

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/handoff-dev/handoff/workerpool"
)

// The control protocol: over the primary's unix stream control socket, a
// client sends one request, a JSON object on one line, and reads one reply
// line (see Reply). A stop request's connection then stays open until the
// primary has exited. Field names are a contract.
//
//	{"op":"status"}
//	{"op":"reload"}
//	{"op":"rollback"}
//	{"op":"scale","workers":4}      {"op":"scale","delta":1}
//	{"op":"stop"}

// MaxLine bounds a request line; a longer one is refused.
const MaxLine = 4096

// Request is one request to the primary.
type Request struct {
	Op string `json:"op"`
	// Workers is the number of workers a scale asks for; Delta, if not 0,
	// asks for the current number plus Delta instead.
	Workers int `json:"workers,omitempty"`
	Delta   int `json:"delta,omitempty"`
}

// Reply is the primary's answer.
type Reply struct {
	OK bool `json:"ok"`
	// Error says why not, in one line, when OK is false.
	Error string `json:"error,omitempty"`
	// Retry: this primary handed over to a new one while the request was
	// pending; the same request should go to the control socket again,
	// where the new primary answers.
	Retry bool `json:"retry,omitempty"`
	// Message is a one-line summary for people ("generation 3 serving").
	Message string `json:"message,omitempty"`
	// Pid is the primary that answered.
	Pid int `json:"pid,omitempty"`
	// Generation serving after a reload or a rollback.
	Generation int `json:"generation,omitempty"`
	// Workers is the number of workers after a scale.
	Workers int `json:"workers,omitempty"`
	// Status answers a status request.
	Status *Status `json:"status,omitempty"`
}

// errLineTooLong is a request line longer than MaxLine.
var errLineTooLong = fmt.Errorf("request longer than %d bytes", MaxLine)

// ParseRequest decodes and checks one request line (without its
// newline). Unknown fields are ignored; anything else that is not one
// valid request is an error that says what is wrong.
func ParseRequest(line []byte) (Request, error) {
	var r Request
	if len(line) > MaxLine {
		return r, errLineTooLong
	}
	dec := json.NewDecoder(bytes.NewReader(line))
	if err := dec.Decode(&r); err != nil {
		return Request{}, errors.New("not a JSON request object")
	}
	if dec.More() {
		return Request{}, errors.New("more than one JSON value on the request line")
	}
	switch r.Op {
	case "status", "reload", "rollback", "stop":
		if r.Workers != 0 || r.Delta != 0 {
			return Request{}, fmt.Errorf("%s takes no workers or delta", r.Op)
		}
	case "scale":
		switch {
		case r.Workers != 0 && r.Delta != 0:
			return Request{}, errors.New("scale takes workers or delta, not both")
		case r.Delta != 0:
			if r.Delta < -workerpool.MaxSize || r.Delta > workerpool.MaxSize {
				return Request{}, fmt.Errorf("scale delta %d: out of range", r.Delta)
			}
		case r.Workers < 1 || r.Workers > workerpool.MaxSize:
			return Request{}, fmt.Errorf("scale to %d workers: the number must be from 1 to %d", r.Workers, workerpool.MaxSize)
		}
	case "":
		return Request{}, errors.New("no op in the request")
	default:
		return Request{}, fmt.Errorf("unknown op %q (status, reload, rollback, scale, stop)", truncate(r.Op, 40))
	}
	return r, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// unwrapAll is the innermost error err wraps: "permission denied" where
// the line names the path already.
func unwrapAll(err error) error {
	for u := errors.Unwrap(err); u != nil; u = errors.Unwrap(err) {
		err = u
	}
	return err
}
