//go:build linux

package runtime

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/handoff-dev/handoff/workerpool"
)

// Bounds of the stderr quoted in a failure's one line.
const (
	stderrLines    = 3   // the last non-empty lines
	stderrLineMax  = 240 // characters of one line
	stderrQuoteMax = 900 // characters in all
)

// errorLine spots a line that states an error (Node's "Error: listen
// EADDRINUSE…", Python's "OSError: [Errno 98]…", Go's "panic: …"), as
// opposed to a stack frame or a version banner.
var errorLine = regexp.MustCompile(`^\s*([\w.$]*(Error|Exception)\b|panic:|fatal|FATAL|Fatal)`)

// addrInUse spots a bind that failed because the address is held.
var addrInUse = regexp.MustCompile(`(?i)address already in use|EADDRINUSE`)

// stderrEnd quotes the end of a worker's stderr on one line: its last few
// non-empty lines, joined with " | ", preceded (then "… | ") by the last
// line that states an error (else that names an address in use) if that
// came earlier, as with Node, whose crash ends with a stack, the error's
// fields and a version banner.
func stderrEnd(tail string) string {
	var lines []string
	for _, l := range strings.Split(tail, "\n") {
		if l = strings.TrimRight(l, " \t\r"); strings.TrimSpace(l) != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 {
		return ""
	}
	cut := max(len(lines)-stderrLines, 0)
	quote := lines[cut:]
	if i := lastMatch(lines[:cut], errorLine, addrInUse); i >= 0 {
		if i < cut-1 {
			quote = append([]string{lines[i], "…"}, quote...)
		} else {
			quote = append([]string{lines[i]}, quote...)
		}
	}
	for i, l := range quote {
		l = strings.TrimSpace(l)
		if len(l) > stderrLineMax {
			l = l[:stderrLineMax] + "…"
		}
		quote[i] = l
	}
	s := strings.Join(quote, " | ")
	if len(s) > stderrQuoteMax {
		s = "…" + s[len(s)-stderrQuoteMax:]
	}
	return s
}

// lastMatch is the index of the last line that the first of res to match
// any line matches, or -1.
func lastMatch(lines []string, res ...*regexp.Regexp) int {
	for _, re := range res {
		for i := len(lines) - 1; i >= 0; i-- {
			if re.MatchString(lines[i]) {
				return i
			}
		}
	}
	return -1
}

// bindAdvice says what to do about a worker in err (a failed start,
// deploy or scale) that could not bind an address in use: "" for any
// other failure. It follows failureLine.
func (p *primary) bindAdvice(err error) string {
	var rb *workerpool.RolledBackError
	if errors.As(err, &rb) {
		err = rb.Cause
	}
	var se *workerpool.StartError
	var pe *workerpool.ProbationError
	tail := ""
	switch {
	case errors.As(err, &pe):
		tail = pe.Exit.StderrTail
	case errors.As(err, &se):
		tail = se.Exit.StderrTail
	}
	if !addrInUse.MatchString(tail) {
		return ""
	}
	switch {
	case p.binds.on:
		return "; the address it binds is in use and is not one handoff adopts (a bind to a --listen address: " +
			strings.Join(p.binds.addrs, ", ") + ", or to its port on any host)"
	case p.binds.off == "--adopt-bind off":
		return "; if it binds a --listen address itself, which the primary holds: let handoff adopt that bind " +
			"(--adopt-bind auto or on), or have the program take its socket from fd 3 (LISTEN_FDS)"
	}
	return "; if it binds a --listen address itself, which the primary holds: bind adoption is off here (" +
		p.binds.off + "), so have the program take its socket from fd 3 (LISTEN_FDS)"
}

// rolledBack is a deploy that failed and was rolled back: every slot it
// had replaced runs the generation before it again.
type rolledBack struct {
	gen, serving int
	err          *workerpool.RolledBackError
}

func (e *rolledBack) Error() string {
	return fmt.Sprintf("rolled back: %s; generation %d serving", failureLine(e.err), e.serving)
}

func (e *rolledBack) Unwrap() error { return e.err }

// failureLine makes one line of a failed start, deploy or scale: the
// worker's failure and the last lines of its stderr (see stderrEnd).
func failureLine(err error) string {
	var rb *workerpool.RolledBackError
	if errors.As(err, &rb) {
		msg := failureLine(rb.Cause)
		if rb.Err != nil {
			msg += "; rolling back failed: " + failureLine(rb.Err)
		}
		return msg
	}
	var se *workerpool.StartError
	var pe *workerpool.ProbationError
	msg, tail := err.Error(), ""
	switch {
	case errors.As(err, &pe):
		msg, tail = pe.Error(), pe.Exit.StderrTail
	case errors.As(err, &se):
		msg, tail = se.Error(), se.Exit.StderrTail
	}
	if end := stderrEnd(tail); end != "" {
		msg += "; its stderr ends: " + end
	}
	return msg
}
