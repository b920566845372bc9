package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/handoff-dev/handoff/internal/control"
	"github.com/handoff-dev/handoff/runtime"
	"github.com/handoff-dev/handoff/workerpool"
)

// The commands that talk to a running primary over its control socket.

// controlOptions are the flags of a control command as given.
type controlOptions struct {
	path   string // --control; "" to find the socket (callPrimary)
	asJSON bool   // --json
}

// controlFlag is every control command's --control.
var controlFlag = flagSpec[controlOptions]{
	name: "control", arg: "PATH",
	value: func(o *controlOptions) any { return &o.path },
	help:  "the primary's control socket (default: see 'handoff help')",
	doc:   "the primary's control socket (the one `handoff run --control` names)",
	docDefault: "the socket of the one primary found in the default " +
		"directories, below",
}

// controlCommand is a control command, its --help head and its flags.
func controlCommand(name, head string, flags ...flagSpec[controlOptions]) command[controlOptions] {
	return command[controlOptions]{name: name, head: head, column: 16, flags: flags}
}

var statusCmd = controlCommand("status", `Usage: handoff status [--control PATH] [--json]

Shows the running primary: the current and previous generations (the file
each runs: path, size, modification time, SHA-256), its workers (slot, pid,
generation, state, uptime, crash restarts, resident memory) and the deploy
in progress, if any.

`,
	controlFlag.withHelp(`the primary's control socket (default: the one primary
found in the default directory, see 'handoff help')`),
	flagSpec[controlOptions]{
		name:  "json",
		value: func(o *controlOptions) any { return &o.asJSON },
		help: `print the status as JSON (field names are stable; see
docs/operations.md)`,
		doc:        "print the status as JSON, with the stable names below",
		docDefault: "off: a table",
	})

var reloadCmd = controlCommand("reload", `Usage: handoff reload [--control PATH]

Deploys what is on disk now, as SIGHUP does, waits for the outcome
(probation included, see --min-uptime) and prints it in one line: exit 0
when the deploy finished, 1 when it was aborted or rolled back (the reason
follows) or the primary cannot be reached.

`, controlFlag)

var rollbackCmd = controlCommand("rollback", `Usage: handoff rollback [--control PATH]

Deploys the previous generation again: the very file it ran, pinned when it
was deployed (even if it has been replaced or deleted since), one worker at
a time with the same rules as a deploy. Waits for the outcome and prints it
in one line: exit 0 when done, 1 when it was refused (no previous
generation: the primary has not finished a deploy since it started) or
aborted (the reason follows), or the primary cannot be reached. A rollback
makes the generation it replaces the previous one: a second rollback goes
forward again. The next SIGHUP or reload deploys what is on disk, as always.

`, controlFlag)

var scaleCmd = controlCommand("scale", `Usage: handoff scale [--control PATH] N|+N|-N

Sets the number of workers to N, or changes it by +N or -N (SIGTTIN and
SIGTTOU to the primary are +1 and -1). New workers start at once and count
once ready; removed ones (the highest slots) drain. Exits 0 once done.

`, controlFlag)

var stopCmd = controlCommand("stop", `Usage: handoff stop [--control PATH]

Shuts the primary down gracefully, as SIGTERM does: every worker drains,
then the primary exits. Returns once it has exited.

`, controlFlag)

// signedNumber is an argument such as -1 or +2: no flag.
var signedNumber = regexp.MustCompile(`^[+-][0-9]+$`)

// parseControl reads the flags of the control command c; positional are
// the arguments that are not flags (a signed number such as -1 is one).
func parseControl(c command[controlOptions], args []string, stdout io.Writer) (o controlOptions, positional []string, err error) {
	fs := c.flagSet(&o)
	var rest []string
	for _, a := range args {
		if signedNumber.MatchString(a) {
			positional = append(positional, a)
			continue
		}
		rest = append(rest, a)
	}
	for {
		if err := parseFlags(fs, rest, stdout, c.usage); err != nil {
			return controlOptions{}, nil, err
		}
		if fs.NArg() == 0 {
			break
		}
		// Flags may follow the positional arguments too.
		positional = append(positional, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	return o, positional, c.check(&o)
}

// noArgs refuses the arguments of a command that takes none.
func noArgs(name string, pos []string) error {
	if len(pos) > 0 {
		return usageError{fmt.Errorf("%s takes no arguments (got %q): see 'handoff %s --help'", name, pos[0], name)}
	}
	return nil
}

// callPrimary sends req to the control socket at path (found with
// control.Find if "") and turns a refusal into an error; Ctrl-C
// ends the wait.
func callPrimary(path string, req control.Request, timeout time.Duration) (control.Reply, error) {
	if path == "" {
		found, err := control.Find()
		if err != nil {
			return control.Reply{}, err
		}
		path = found
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	rep, err := control.Call(ctx, path, req)
	if err != nil {
		return rep, err
	}
	if !rep.OK {
		return rep, refusal{rep.Error}
	}
	return rep, nil
}

// refusal is the primary's answer that it did not do what was asked.
type refusal struct{ msg string }

func (r refusal) Error() string { return r.msg }

// statusTimeout bounds a status request: the primary answers it at once.
const statusTimeout = 10 * time.Second

func statusCommand(args []string, stdout io.Writer) error {
	o, pos, err := parseControl(statusCmd, args, stdout)
	if err != nil {
		return err
	}
	if err := noArgs("status", pos); err != nil {
		return err
	}
	rep, err := callPrimary(o.path, control.Request{Op: "status"}, statusTimeout)
	if err != nil {
		return err
	}
	if rep.Status == nil {
		return errors.New("the primary answered without a status")
	}
	if o.asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep.Status)
	}
	printStatus(stdout, rep.Status)
	return nil
}

func printStatus(w io.Writer, st *runtime.Status) {
	pr := st.Primary
	fmt.Fprintf(w, "primary %d: generation %d, %d workers, up %s\n", pr.Pid, pr.Generation, pr.Workers, roundDuration(pr.UptimeSeconds))
	fmt.Fprintf(w, "listening %s; control %s\n", strings.Join(pr.Listeners, ", "), pr.Control)
	if st.Balance != "" {
		fmt.Fprintf(w, "balance %s (%s)\n", st.Balance, st.BalanceReason)
	}
	printGenerations(w, st.Generations)
	if u := st.Upgrade; u != nil {
		kind := u.Kind
		if u.NewPrimary != 0 {
			kind += fmt.Sprintf(", new primary %d", u.NewPrimary)
		}
		step := "starting"
		switch {
		case u.RollingBack:
			step = "failed, rolling back"
		case u.Step > 0:
			step = fmt.Sprintf("step %d/%d", u.Step, u.Steps)
		}
		fmt.Fprintf(w, "upgrade to generation %d (%s): %s, %s elapsed\n", u.Generation, kind, step, roundDuration(u.ElapsedSeconds))
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	probed := slices.ContainsFunc(st.Workers, func(wk runtime.WorkerStatus) bool { return wk.Probe != nil })
	head := "SLOT\tPID\tGEN\tSTATE\tUPTIME\tRESTARTS\tRSS\tQUEUE\tGIVEN"
	if probed {
		head += "\tLAST PROBE"
	}
	fmt.Fprintln(tw, head)
	now := time.Now()
	for _, wk := range st.Workers {
		fmt.Fprintf(tw, "%d\t%d\t%d\t%s\t%s\t%d\t%s\t%s\t%s", wk.Slot, wk.Pid, wk.Generation, wk.State,
			roundDuration(wk.UptimeSeconds), wk.Restarts, formatBytes(wk.RSSBytes), optional(wk.Queue), optional(wk.Given))
		if probed {
			fmt.Fprintf(tw, "\t%s", describeProbe(wk.Probe, now))
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
}

// describeProbe is a worker's last HTTP probe in a few words: "health ok,
// 3s ago: 200 ok", "ready failing, 0s ago: 503 warming up".
func describeProbe(p *runtime.ProbeStatus, now time.Time) string {
	if p == nil {
		return "-"
	}
	state := "ok"
	switch {
	case p.OK:
	case p.Failures > 1:
		state = fmt.Sprintf("failed %d in a row", p.Failures)
	default:
		state = "failed"
	}
	result := p.Result
	if len(result) > 48 {
		result = result[:45] + "..."
	}
	return fmt.Sprintf("%s %s, %s ago: %s", p.Kind, state, roundDuration(now.Sub(p.At).Seconds()), result)
}

// optional is a number of status, or "-" where it does not apply.
func optional[T int | uint64](n *T) string {
	if n == nil {
		return "-"
	}
	return fmt.Sprint(*n)
}

// printGenerations shows what the workers run and what a rollback would
// deploy.
func printGenerations(w io.Writer, gs runtime.GenerationsStatus) {
	if gs.Current == nil {
		return
	}
	fmt.Fprintf(w, "current  %s\n", describeGeneration(gs.Current))
	if gs.Previous == nil {
		fmt.Fprintln(w, "previous none (nothing to roll back to)")
		return
	}
	fmt.Fprintf(w, "previous %s\n", describeGeneration(gs.Previous))
}

func describeGeneration(g *runtime.GenerationStatus) string {
	s := fmt.Sprintf("generation %d: %s", g.Generation, g.Path)
	if g.Size > 0 {
		s += ", " + formatBytes(g.Size)
	}
	if !g.ModTime.IsZero() {
		s += ", modified " + g.ModTime.Local().Format("2006-01-02 15:04:05")
	}
	if len(g.SHA256) >= 12 {
		s += ", sha256 " + g.SHA256[:12]
	}
	if g.RollbackOf > 0 {
		s += fmt.Sprintf(" (rollback to generation %d)", g.RollbackOf)
	}
	if g.Pinned != "" {
		s += "\n         " + g.Pinned
	}
	if g.ScriptChanged != "" {
		s += "\n         changed since its deploy: " + g.ScriptChanged
	}
	return s
}

func roundDuration(seconds float64) string {
	d := time.Duration(seconds * float64(time.Second))
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Hour:
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

func formatBytes(n int64) string {
	switch {
	case n <= 0:
		return "-"
	case n < 1<<20:
		return fmt.Sprintf("%.1fKiB", float64(n)/(1<<10))
	case n < 1<<30:
		return fmt.Sprintf("%.1fMiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%.1fGiB", float64(n)/(1<<30))
}

func reloadCommand(args []string, stdout io.Writer) error {
	return deployCommand(reloadCmd, args, stdout)
}

func rollbackCommand(args []string, stdout io.Writer) error {
	return deployCommand(rollbackCmd, args, stdout)
}

// deployCommand asks for a deploy-like job (reload, rollback: the op is
// the command's name), waits for it and prints its outcome in one line.
func deployCommand(c command[controlOptions], args []string, stdout io.Writer) error {
	name := c.name
	o, pos, err := parseControl(c, args, stdout)
	if err != nil {
		return err
	}
	if err := noArgs(name, pos); err != nil {
		return err
	}
	rep, err := callPrimary(o.path, control.Request{Op: name}, 0)
	if errors.As(err, new(refusal)) {
		for _, outcome := range []string{"aborted", "refused", "rolled back"} {
			if strings.HasPrefix(err.Error(), outcome) {
				return fmt.Errorf("%s %v", name, err)
			}
		}
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s %s (primary %d)\n", name, rep.Message, rep.Pid)
	return nil
}

func scaleCommand(args []string, stdout io.Writer) error {
	o, pos, err := parseControl(scaleCmd, args, stdout)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError{errors.New("scale needs one number of workers, N, +N or -N: e.g. handoff scale 4")}
	}
	req := control.Request{Op: "scale"}
	arg := pos[0]
	n, convErr := strconv.Atoi(arg)
	switch {
	case convErr != nil:
		return usageError{fmt.Errorf("scale %q: not a number of workers (N, +N or -N, e.g. 4 or +1)", arg)}
	case arg[0] == '+' || arg[0] == '-':
		if n == 0 || n < -workerpool.MaxSize || n > workerpool.MaxSize {
			return usageError{fmt.Errorf("scale %s: the change must be from 1 to %d workers, up or down", arg, workerpool.MaxSize)}
		}
		req.Delta = n
	default:
		if n < 1 || n > workerpool.MaxSize {
			return usageError{fmt.Errorf("scale %s: the number of workers must be from 1 to %d", arg, workerpool.MaxSize)}
		}
		req.Workers = n
	}
	rep, err := callPrimary(o.path, req, 0)
	if err != nil {
		return err
	}
	unit := "workers"
	if rep.Workers == 1 {
		unit = "worker"
	}
	fmt.Fprintf(stdout, "scaled to %d %s (primary %d)\n", rep.Workers, unit, rep.Pid)
	return nil
}

func stopCommand(args []string, stdout io.Writer) error {
	o, pos, err := parseControl(stopCmd, args, stdout)
	if err != nil {
		return err
	}
	if err := noArgs("stop", pos); err != nil {
		return err
	}
	rep, err := callPrimary(o.path, control.Request{Op: "stop"}, 0)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "stopped (primary %d)\n", rep.Pid)
	return nil
}
