// Command handoff keeps a port served through every deploy: a primary owns
// the listening sockets and runs worker processes that share them, and a
// SIGHUP replaces the workers one at a time. See README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	goruntime "runtime"

	"github.com/handoff-dev/handoff/internal/shim"
	"github.com/handoff-dev/handoff/runtime"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

// exitUsage is the exit code of a mistake on the command line.
const exitUsage = 2

func main() {
	// A worker's exec step runs this same executable; it never returns.
	shim.Main()
	// Catch HUP, TERM and INT before anything else, so a deploy or stop
	// asked for during start-up waits for the primary instead of killing it.
	sigs := runtime.CatchSignals()
	os.Exit(run(os.Args[1:], sigs, os.Stdout, os.Stderr))
}

// usageError is a command-line mistake: exit code 2.
type usageError struct{ error }

func run(args []string, sigs chan os.Signal, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, topUsage)
		return exitUsage
	}
	if err := needsLinux(args[0], goos); err != nil {
		fmt.Fprintln(stderr, "handoff:", err)
		return 1
	}
	var err error
	switch args[0] {
	case "run":
		err = runCommand(args[1:], sigs, stdout, stderr)
	case "status":
		err = statusCommand(args[1:], stdout)
	case "reload":
		err = reloadCommand(args[1:], stdout)
	case "rollback":
		err = rollbackCommand(args[1:], stdout)
	case "scale":
		err = scaleCommand(args[1:], stdout)
	case "stop":
		err = stopCommand(args[1:], stdout)
	case "dev":
		err = devCommand(args[1:], sigs, stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, "handoff", version)
	case "help", "--help", "-help", "-h":
		fmt.Fprint(stdout, topUsage)
	default:
		err = usageError{fmt.Errorf("unknown command %q: see 'handoff help'", args[0])}
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errHelp):
		return 0
	case errors.As(err, new(usageError)):
		fmt.Fprintln(stderr, "handoff:", err)
		return exitUsage
	default:
		fmt.Fprintln(stderr, "handoff:", err)
		return 1
	}
}

// goos is the platform this handoff runs on (a variable for the tests).
var goos = goruntime.GOOS

// needsLinux says why cmd cannot run on goos: run and dev start a
// primary, which needs Linux (see runtime/platform_linux.go). The other
// commands, and library mode, build and run everywhere.
func needsLinux(cmd, goos string) error {
	if goos == "linux" || (cmd != "run" && cmd != "dev") {
		return nil
	}
	return fmt.Errorf("handoff %s needs Linux (its primary forks workers with PR_SET_PDEATHSIG, signals through pidfds and checks peers with SO_PEERCRED; this is %s): run it in a Linux VM or container", cmd, goos)
}

func runCommand(args []string, sigs chan os.Signal, stdout, stderr io.Writer) error {
	cfg, logCfg, err := parseRun(args, stdout)
	if err != nil {
		return err
	}
	ws := lockedWriter(stderr)
	log, err := newLogger(logCfg, ws)
	if err != nil {
		return usageError{err}
	}
	logTo(&cfg, log, ws)
	cfg.Signals = sigs
	return runtime.Run(context.Background(), cfg)
}

const topUsage = `handoff keeps a port served through every deploy.

Usage:
  handoff run [flags] -- COMMAND [ARG...]   run COMMAND as workers sharing the listeners
  handoff status [--control PATH] [--json]  show the workers and the deploy in progress
  handoff reload [--control PATH]           deploy what is on disk now, wait for the outcome
  handoff rollback [--control PATH]         deploy the previous generation again, wait for
                                            the outcome
  handoff scale [--control PATH] N|+N|-N    set or change the number of workers
  handoff stop [--control PATH]             shut down gracefully, wait until done
  handoff dev [flags] [--build CMD] -- COMMAND [ARG...]
                                            roll every source change out (built
                                            first with --build) without going dark
  handoff version                           print the version
  handoff help                              this text

Run 'handoff run --help' for the flags, signals and the worker contract, and
'handoff COMMAND --help' for each command.

status, reload, rollback, scale and stop talk to the primary over its control socket
(handoff run --control PATH). Without --control, a primary puts it in
$HANDOFF_CONTROL_DIR if set, else /run/handoff for root, else
$XDG_RUNTIME_DIR/handoff, else $TMPDIR/handoff-UID, named after its first
listener; the commands then find it there if exactly one primary runs
(in directories of your own or root's that no one else may write). They
believe only a primary running as you or root.
`
