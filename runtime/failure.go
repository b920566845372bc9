package runtime

import (
	"regexp"
	"strings"
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

// workerFailure is what a failed worker's one line says after its status:
// the end of its stderr, and, when it could not bind an address in use,
// what to do about it.
func (p *primary) workerFailure(tail string) string {
	var msg string
	if end := stderrEnd(tail); end != "" {
		msg = "; its stderr ends: " + end
	}
	if !addrInUse.MatchString(tail) {
		return msg
	}
	switch {
	case p.binds.on:
		msg += "; the address it binds is in use and is not one handoff adopts (a bind to a --listen address: " +
			strings.Join(p.binds.addrs, ", ") + ", or to its port on any host)"
	case p.binds.off == "--adopt-bind off":
		msg += "; if it binds a --listen address itself, which the primary holds: let handoff adopt that bind " +
			"(--adopt-bind auto or on), or have the program take its socket from fd 3 (LISTEN_FDS)"
	default:
		msg += "; if it binds a --listen address itself, which the primary holds: bind adoption is off here (" +
			p.binds.off + "), so have the program take its socket from fd 3 (LISTEN_FDS)"
	}
	return msg
}
