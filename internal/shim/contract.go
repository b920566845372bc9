package shim

import (
	"fmt"
	"os"
)

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

// EnvExecFD, when set, is the descriptor at which the shim inherited the
// pinned file of the worker's generation (see internal/pin): the shim execs
// that file, whatever is at the command's path now. The launcher puts it
// past the listeners and the message channel.
const EnvExecFD = "HANDOFF_SHIM_EXEC_FD"

// EnvExecVia, optional with EnvExecFD, is a symlink to /proc/self/fd/N
// (pin.ExecLink) named like the command: exec'd through it, the worker is
// named after its command (/proc/PID/comm), not after the number N.
const EnvExecVia = "HANDOFF_SHIM_EXEC_VIA"

// EnvExecTrace, set with EnvExecFD, asks the shim to have its parent (the
// thread of the primary that forked it) trace it from right before the
// exec (PTRACE_TRACEME): the exec then stops the worker before it runs,
// for the primary to verify that it executes the pinned content.
const EnvExecTrace = "HANDOFF_SHIM_EXEC_TRACE"

// cannotExec is the one line a shim that cannot exec its command writes
// to stderr (the worker's output), before it exits with ExitNotFound or
// ExitCannotExec.
func cannotExec(path string, why any) {
	fmt.Fprintf(os.Stderr, "handoff: cannot exec worker command %s: %v\n", path, why)
}
