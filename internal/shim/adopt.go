//go:build linux

package shim

import (
	"fmt"
	"os"

	"github.com/handoff-dev/handoff/internal/adopt"
)

// adoptBinds, when the primary asked for it (adopt.EnvFD), installs the
// filter that sends the command's binds to the primary (internal/adopt) on
// this goroutine's thread, which it locks for good: the exec that follows
// must happen on it. It returns env without adopt.EnvFD, and false when
// the command must not be started: a filter whose notification fd did not
// reach the primary would fail every bind.
func adoptBinds(env []string) ([]string, bool) {
	value, found := "", false
	out := env[:0:0]
	for _, kv := range env {
		if hasKey(kv, adopt.EnvFD) {
			value, found = kv[len(adopt.EnvFD)+1:], true
			continue
		}
		out = append(out, kv)
	}
	if !found {
		return env, true
	}
	fd, traps, err := adopt.ParseEnv(value)
	if err != nil {
		fmt.Fprintf(os.Stderr, "handoff: %v\n", err)
		return out, true
	}
	// A failure that leaves no filter is the primary's to report (it
	// gets the reason); the command runs without adoption.
	if fatal, err := adopt.Worker(fd, traps); fatal {
		fmt.Fprintf(os.Stderr, "handoff: %v\n", err)
		return out, false
	}
	return out, true
}
