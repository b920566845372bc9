package shim

import (
	"strings"

	"github.com/handoff-dev/handoff/internal/adopt"
)

// ChannelEnv names the variables that give a worker its message channel
// (EnvChannelFD, and Node's for its built-in IPC). They belong to the one
// process the channel's fd was passed to.
var ChannelEnv = []string{EnvChannelFD, "NODE_CHANNEL_FD", "NODE_CHANNEL_SERIALIZATION_MODE"}

// primaryOnly are the variables of a primary's environment that never
// reach a worker: systemd's socket activation, notify socket and
// watchdog (meant for the primary), the worker contract's variables
// (each worker gets its own), Node's channel, handoff's internal ones
// (the exec step, the hand-over socket, runtime.EnvStandalone) and
// tableflip's marker. docs/worker-contract.md ("What a worker gets")
// lists them for users.
var primaryOnly = struct{ prefixes, keys []string }{
	prefixes: []string{"LISTEN_", "WATCHDOG_", "NODE_CHANNEL_"},
	keys: []string{"NOTIFY_SOCKET", "HANDOFF_WORKER", "HANDOFF_GENERATION", EnvMarker, EnvChannelFD,
		EnvExecFD, EnvExecVia, EnvExecTrace, adopt.EnvFD, "HANDOFF_HANDOVER", "HANDOFF_HANDOVER_STATE", "HANDOFF_STANDALONE", "TABLEFLIP_HAS_PARENT_7DIU3"},
}

// PrimaryOnly reports whether the environment variable key belongs to the
// primary alone and is never passed on to a worker.
func PrimaryOnly(key string) bool {
	for _, p := range primaryOnly.prefixes {
		if strings.HasPrefix(key, p) {
			return true
		}
	}
	for _, k := range primaryOnly.keys {
		if key == k {
			return true
		}
	}
	return false
}

// WorkerEnv is environ (KEY=VALUE entries) less what PrimaryOnly names:
// what a worker inherits of the primary's environment.
func WorkerEnv(environ []string) []string {
	out := make([]string, 0, len(environ))
	for _, kv := range environ {
		k, _, _ := strings.Cut(kv, "=")
		if !PrimaryOnly(k) {
			out = append(out, kv)
		}
	}
	return out
}
