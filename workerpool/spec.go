package workerpool

import "os"

// Spec is what a worker runs: one deploy's resolved command.
type Spec struct {
	// Path is the resolved executable (absolute, symlinks followed).
	Path string
	// Args is the argv, Args[0] included.
	Args []string
	// Env is the environment before the worker contract's variables are
	// added; it must not hold LISTEN_*, NOTIFY_SOCKET or HANDOFF_*.
	Env []string
	// Dir is the working directory; empty means the primary's.
	Dir string
	// Generation counts deploys; it reaches the worker as HANDOFF_GENERATION.
	Generation int
	// Pin, if not nil, is the file the generation pinned (internal/pin's
	// File): OSLauncher execs what it says, whatever is at Path now. nil
	// execs Path.
	Pin Pinned
}

// Pinned is a generation's pinned executable.
type Pinned interface {
	// Exec says how to start the command now, args being its argv: exe
	// is a new descriptor (close-on-exec; the caller closes it) of the
	// file to exec, or nil to exec Path; argv is what to exec it with;
	// note, if not "", says how what runs differs from what was deployed
	// (a #! script changed at its path), for the log.
	Exec(args []string) (exe *os.File, argv []string, note string, err error)
	// VerifyExec checks the worker pid, stopped right after the exec of
	// exe (the descriptor Exec gave) and before it runs, against the pin.
	VerifyExec(pid int, exe *os.File) error
}

// Launcher starts a worker for a slot.
type Launcher interface {
	// Launch starts a worker of slot running spec. listeners, if not nil,
	// are the raw fds of the worker's own listening sockets (see
	// Sockets), which it is given instead of the launcher's.
	Launch(slot int, spec *Spec, listeners []int) (Process, error)
}

// ReadyMode says how a worker's readiness is learnt.
type ReadyMode int

const (
	// ReadyNotify waits for READY=1 on the worker's NOTIFY_SOCKET.
	ReadyNotify ReadyMode = iota
	// ReadyDelay counts a worker ready once it has been alive for the
	// delay, or at READY=1 if that comes first.
	ReadyDelay
	// ReadyBind counts a worker ready once its bind of a listener's
	// address was adopted (see ExtraFD.Started), or at READY=1; with a
	// positive OSLauncher.ReadyDelay, also once it has been alive that
	// long (a worker that takes its socket from LISTEN_FDS and says
	// nothing).
	ReadyBind
	// ReadyProbe counts a worker ready once OSLauncher.Probe says so (an
	// HTTP GET through the worker's own socket answered 2xx); READY=1, a
	// bind or a delay do not.
	ReadyProbe
)
