package shim

// The exec step's contract with the primary, on every platform: the
// primary that starts it (shim.go) runs on Linux only, but library mode and
// the CLI name these everywhere.

// EnvMarker is set in the environment of a process that must act as the
// shim. Its value is the resolved path of the command to exec; the command's
// argv follows argv[0] of the shim (argv[1:]).
const EnvMarker = "HANDOFF_SHIM_EXEC"

// EnvChannelFD names the worker's end of its message channel, when it has
// one: always the fd right after the listeners (3+LISTEN_FDS).
const EnvChannelFD = "HANDOFF_CHANNEL_FD"

// Exit codes of a shim that could not exec its command, as shells use them.
const (
	ExitNotFound   = 127
	ExitCannotExec = 126
)
