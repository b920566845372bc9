//go:build linux

package runtime

import (
	"errors"
	"fmt"
	"strings"
)

// deployedState is what the primary tells systemd as a deploy of
// generation gen ends with err: READY=1 and, in STATUS=, the generation
// that serves now, serving, which is not gen when the deploy was refused
// or rolled back (that outcome and its reason follow, on the same line).
func deployedState(serving, gen int, err error) string {
	if err == nil {
		return fmt.Sprintf("READY=1\nSTATUS=serving generation %d", serving)
	}
	outcome := "aborted"
	var rb *rolledBack
	if errors.As(err, &rb) {
		outcome, err = "rolled back", rb.err
	}
	// STATUS= is one line.
	reason := strings.Join(strings.Fields(failureLine(err)), " ")
	return fmt.Sprintf("READY=1\nSTATUS=serving generation %d; generation %d %s: %s", serving, gen, outcome, reason)
}
