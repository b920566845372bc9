//go:build linux

package integration

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Event is one JSON line the primary wrote to its stderr.
type Event struct {
	Seq int // position in the stream, from 0
	Msg string
	F   map[string]any
	Raw string
}

// Int returns an integer field.
func (e Event) Int(key string) (int, bool) {
	switch v := e.F[key].(type) {
	case json.Number:
		if i, err := v.Int64(); err == nil {
			return int(i), true
		}
		if f, err := v.Float64(); err == nil && f == math.Trunc(f) {
			return int(f), true
		}
	case string:
		if i, err := strconv.Atoi(v); err == nil {
			return i, true
		}
	}
	return 0, false
}

// Str returns a field as a string ("" when absent).
func (e Event) Str(key string) string {
	switch v := e.F[key].(type) {
	case nil:
		return ""
	case string:
		return v
	case json.Number:
		return v.String()
	default:
		b, _ := json.Marshal(v)
		return string(b)
	}
}

// Duration reads a duration field written either as a Go duration string
// ("100ms") or as a number. zap's JSON encoders write numbers as seconds
// (the default) or as integer nanoseconds; an integer of 1000 or more is
// taken as nanoseconds, anything else as seconds.
func (e Event) Duration(key string) (time.Duration, bool) {
	switch v := e.F[key].(type) {
	case string:
		d, err := time.ParseDuration(v)
		return d, err == nil
	case json.Number:
		if i, err := v.Int64(); err == nil && (i >= 1000 || i == 0) {
			return time.Duration(i), true
		}
		f, err := v.Float64()
		if err != nil {
			return 0, false
		}
		return time.Duration(f * float64(time.Second)), true
	}
	return 0, false
}

func (e Event) String() string { return e.Raw }

// Time is when the primary logged the event (its "ts", ISO 8601 to the
// millisecond, as cmd/handoff writes it).
func (e Event) Time() (time.Time, bool) {
	ts, err := time.Parse("2006-01-02T15:04:05.000Z0700", e.Str("ts"))
	return ts, err == nil
}

// eventLog is the primary's stderr: every line, and the JSON ones parsed.
type eventLog struct {
	mu      sync.Mutex
	lines   []string
	events  []Event
	changed chan struct{}
	eof     bool
}

func newEventLog() *eventLog { return &eventLog{changed: make(chan struct{})} }

func (l *eventLog) add(line string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, line)
	if ev, ok := parseEvent(line); ok {
		ev.Seq = len(l.events)
		l.events = append(l.events, ev)
	}
	close(l.changed)
	l.changed = make(chan struct{})
}

func (l *eventLog) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.eof = true
	close(l.changed)
	l.changed = make(chan struct{})
}

// parseEvent accepts the primary's log lines: JSON objects with "level",
// "ts" and "msg". Anything else on the stream is worker output.
func parseEvent(line string) (Event, bool) {
	s := strings.TrimSpace(line)
	if !strings.HasPrefix(s, "{") {
		return Event{}, false
	}
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	var f map[string]any
	if err := dec.Decode(&f); err != nil {
		return Event{}, false
	}
	msg, ok := f["msg"].(string)
	if !ok {
		return Event{}, false
	}
	if _, ok := f["level"]; !ok {
		return Event{}, false
	}
	if _, ok := f["ts"]; !ok {
		return Event{}, false
	}
	return Event{Msg: msg, F: f, Raw: s}, true
}

// Len is the number of events so far.
func (l *eventLog) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.events)
}

// Events returns a copy of the events so far.
func (l *eventLog) Events() []Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Event(nil), l.events...)
}

// Lines returns a copy of every stderr line so far.
func (l *eventLog) Lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

// Wait returns the first event at or after index from that satisfies
// pred, waiting up to d for it.
func (l *eventLog) Wait(from int, d time.Duration, pred func(Event) bool) (Event, bool) {
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		l.mu.Lock()
		for i := from; i < len(l.events); i++ {
			if pred(l.events[i]) {
				ev := l.events[i]
				l.mu.Unlock()
				return ev, true
			}
		}
		if from < len(l.events) {
			from = len(l.events)
		}
		ch, eof := l.changed, l.eof
		l.mu.Unlock()
		if eof {
			return Event{}, false
		}
		select {
		case <-ch:
		case <-timer.C:
			return Event{}, false
		}
	}
}

// Filter returns the events with one of msgs.
func (l *eventLog) Filter(msgs ...string) []Event {
	var out []Event
	for _, e := range l.Events() {
		for _, m := range msgs {
			if e.Msg == m {
				out = append(out, e)
				break
			}
		}
	}
	return out
}

// isMsg matches events by message.
func isMsg(msgs ...string) func(Event) bool {
	return func(e Event) bool {
		for _, m := range msgs {
			if e.Msg == m {
				return true
			}
		}
		return false
	}
}

// lineBuf collects a stream's lines.
type lineBuf struct {
	mu    sync.Mutex
	lines []string
}

func (b *lineBuf) add(s string) {
	b.mu.Lock()
	b.lines = append(b.lines, s)
	b.mu.Unlock()
}

func (b *lineBuf) Lines() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.lines...)
}

// Options says how a test starts a primary.
type Options struct {
	// Workers is --workers; 0 means 2.
	Workers int
	// DefaultWorkers leaves --workers out, for handoff to choose; Workers
	// is then the number the test expects it to choose.
	DefaultWorkers bool
	// Listen are the --listen values; nil means one 127.0.0.1:0. "$DIR"
	// in them stands for the test's directory.
	Listen []string
	// Ready is --ready; "" means "notify", "none" leaves --ready out (for
	// handoff to choose).
	Ready string
	// Flags are further handoff flags, put before --.
	Flags []string
	// MinUptime is --min-uptime; "" means harnessMinUptime, short, for
	// the tests that do not exercise probation (the CLI's default is 5s,
	// which every deploy would wait for). Not for Lib programs.
	MinUptime string
	// DefaultMinUptime leaves --min-uptime out, for handoff's own default
	// (5s); MinUptime is then ignored.
	DefaultMinUptime bool
	// Server is the testserver variant copied to DIR/server; "" means v1.
	Server string
	// Command replaces DIR/server as the worker command after --; "$DIR"
	// in it stands for the test's directory.
	Command string
	// Args follow the command after --.
	Args []string
	// Env is added to the primary's environment.
	Env []string
	// ExtraFiles are inherited by the primary as fds 3, 4, ...
	ExtraFiles []*os.File
	// NoWait: return once started, without waiting for "primary ready".
	NoWait bool
	// Subcommand is the handoff subcommand; "" means "run".
	Subcommand string
	// Wrap, if set, runs the primary through this command line (e.g.
	// unshare): Wrap[0] Wrap[1:]... DIR/handoff run ...; PID is then the
	// wrapper's.
	Wrap []string
	// Prepare, if set, is called with the test's directory once DIR/handoff
	// and DIR/server are in place, before the primary starts.
	Prepare func(dir string)
	// Lib, if set, names a library-mode program (a variant in servers):
	// it is copied to DIR/app and started itself, as its own primary, with
	// --log-format json --workers N --pid-file PATH --listen ADDR, then
	// Flags and Args. Ready, Server and Command do not apply.
	Lib string
}

// harnessMinUptime is the probation of the primaries the tests start,
// unless Options.MinUptime says otherwise: short, so that a deploy does
// not wait the CLI's default 5s, yet still a probation.
const harnessMinUptime = "300ms"

// Primary is one `handoff run` a test started, and whatever it became:
// after a self-upgrade the pid file names another process.
type Primary struct {
	t       *testing.T
	Dir     string
	Bin     string // DIR/handoff, the path the primary was started as
	Server  string // DIR/server, the worker command
	PIDFile string
	// TmpDir is the primaries' TMPDIR, inside Dir, so that what they
	// leave there goes with the test.
	TmpDir  string
	Mark    string
	Workers int
	Cmd     *exec.Cmd
	PID     int // the pid of the primary the test started
	Log     *eventLog
	Stdout  *lineBuf

	// ControlDir is the primary's HANDOFF_CONTROL_DIR, where its control
	// socket is (short, outside Dir: a socket path has at most 107 bytes).
	ControlDir string

	done      chan struct{} // closed once the started primary was reaped
	state     *os.ProcessState
	readersWG sync.WaitGroup
}

func newMark(t *testing.T) string {
	var b [6]byte
	rand.Read(b[:])
	return strings.NewReplacer("/", "_", " ", "_").Replace(t.Name()) + "-" + hex.EncodeToString(b[:])
}

// StartPrimary starts `handoff run` in a fresh directory of t, with JSON
// logs and a pid file, and (unless o.NoWait) waits for "primary ready".
// Every process it leads to is SIGKILLed when t ends.
func StartPrimary(t *testing.T, o Options) *Primary {
	t.Helper()
	if o.Workers == 0 {
		o.Workers = 2
	}
	if o.Listen == nil {
		o.Listen = []string{"127.0.0.1:0"}
	}
	if o.Ready == "" {
		o.Ready = "notify"
	}
	if o.Server == "" {
		o.Server = "v1"
	}
	dir := t.TempDir()
	p := &Primary{
		t:       t,
		Dir:     dir,
		Bin:     filepath.Join(dir, "handoff"),
		Server:  filepath.Join(dir, "server"),
		PIDFile: filepath.Join(dir, "handoff.pid"),
		TmpDir:  filepath.Join(dir, "tmp"),
		Mark:    newMark(t),
		Workers: o.Workers,
		Log:     newEventLog(),
		Stdout:  &lineBuf{},
		done:    make(chan struct{}),
	}
	if err := os.Mkdir(p.TmpDir, 0o700); err != nil {
		t.Fatal(err)
	}
	ctlBase, err := os.MkdirTemp("", "hc-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(ctlBase) })
	p.ControlDir = filepath.Join(ctlBase, "c")
	var args []string
	if o.Lib != "" {
		p.Bin = filepath.Join(dir, "app")
		p.InstallLib(o.Lib)
		if o.Prepare != nil {
			o.Prepare(dir)
		}
		args = []string{"--log-format", "json", "--workers", strconv.Itoa(o.Workers), "--pid-file", p.PIDFile}
		for _, l := range o.Listen {
			args = append(args, "--listen", strings.ReplaceAll(l, "$DIR", dir))
		}
		args = append(append(args, o.Flags...), o.Args...)
	} else {
		if err := copyFile(handoffBin, p.Bin, 0o755); err != nil {
			t.Fatal(err)
		}
		p.Install(o.Server)
		if o.Prepare != nil {
			o.Prepare(dir)
		}
		if o.Subcommand == "" {
			o.Subcommand = "run"
		}
		if o.MinUptime == "" {
			o.MinUptime = harnessMinUptime
		}
		args = []string{o.Subcommand, "--log-format", "json", "--workers", strconv.Itoa(o.Workers),
			"--ready", o.Ready, "--pid-file", p.PIDFile, "--min-uptime", o.MinUptime}
		if o.DefaultMinUptime {
			args = args[:len(args)-2]
		}
		if o.Ready == "none" {
			args = slices.Delete(args, 5, 7)
		}
		if o.DefaultWorkers {
			args = slices.Delete(args, 3, 5)
		}
		for _, l := range o.Listen {
			args = append(args, "--listen", strings.ReplaceAll(l, "$DIR", dir))
		}
		args = append(args, o.Flags...)
		args = append(args, "--")
		if o.Command != "" {
			args = append(args, strings.ReplaceAll(o.Command, "$DIR", dir))
		} else {
			args = append(args, p.Server)
		}
		args = append(args, o.Args...)
	}

	cmd := exec.Command(p.Bin, args...)
	if len(o.Wrap) > 0 {
		cmd = exec.Command(o.Wrap[0], append(append(o.Wrap[1:len(o.Wrap):len(o.Wrap)], p.Bin), args...)...)
	}
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), markEnv+"="+p.Mark, "TMPDIR="+p.TmpDir, "HANDOFF_CONTROL_DIR="+p.ControlDir), o.Env...)
	cmd.ExtraFiles = o.ExtraFiles
	// Our own pipes rather than io.Writers: exec.Cmd.Wait would otherwise
	// wait for the copy to end, which is when every process holding the
	// pipe (a new primary, the workers) has gone too.
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = outW, errW
	if cmd, err = startCmd(cmd); err != nil {
		t.Fatal(err)
	}
	outW.Close()
	errW.Close()
	p.Cmd, p.PID = cmd, cmd.Process.Pid
	p.readersWG.Add(2)
	go func() {
		defer p.readersWG.Done()
		defer p.Log.close()
		readLines(errR, p.Log.add)
	}()
	go func() {
		defer p.readersWG.Done()
		readLines(outR, p.Stdout.add)
	}()
	go func() {
		cmd.Wait()
		p.state = cmd.ProcessState
		close(p.done)
	}()
	t.Cleanup(p.cleanup)

	if !o.NoWait {
		p.WaitReady(30 * time.Second)
	}
	return p
}

func readLines(r *os.File, add func(string)) {
	defer r.Close()
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadString('\n')
		if line != "" {
			add(strings.TrimRight(line, "\n"))
		}
		if err != nil {
			return
		}
	}
}

// WaitReady waits for the first "primary ready" and fails the test
// without it.
func (p *Primary) WaitReady(d time.Duration) Event {
	p.t.Helper()
	ev, ok := p.Log.Wait(0, d, isMsg("primary ready"))
	if !ok {
		p.t.Fatalf("no \"primary ready\" within %s; exited=%v\n%s", d, p.Exited(), p.Tail(60))
	}
	return ev
}

// Addrs returns the bound addresses from the "listening" events, in order.
func (p *Primary) Addrs() []string {
	var out []string
	for _, e := range p.Log.Filter("listening") {
		if e.Int0("primary") == p.PID || e.Int0("primary") == 0 {
			out = append(out, e.Str("addr"))
		}
	}
	return out
}

// Int0 is Int, with 0 for an absent field.
func (e Event) Int0(key string) int {
	v, _ := e.Int(key)
	return v
}

// Addr returns the first listener's address and fails the test without one.
func (p *Primary) Addr() string {
	p.t.Helper()
	a := p.Addrs()
	if len(a) == 0 || a[0] == "" {
		p.t.Fatalf("no \"listening\" event with an addr\n%s", p.Tail(40))
	}
	return a[0]
}

// URL is http://ADDR/ for the first listener.
func (p *Primary) URL() string { return "http://" + p.Addr() + "/" }

// Tail returns the last n stderr lines, for failure messages.
func (p *Primary) Tail(n int) string {
	lines := p.Log.Lines()
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Exited reports whether the primary the test started has exited.
func (p *Primary) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// WaitExit waits up to d for the started primary to exit and returns its
// state, or nil if it is still running.
func (p *Primary) WaitExit(d time.Duration) *os.ProcessState {
	select {
	case <-p.done:
		return p.state
	case <-time.After(d):
		return nil
	}
}

// TmpEntries lists what the primaries left in their TMPDIR.
func (p *Primary) TmpEntries() []string {
	ents, _ := os.ReadDir(p.TmpDir)
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// PIDFromFile reads the pid file (0 if it cannot be read).
func (p *Primary) PIDFromFile() int {
	b, err := os.ReadFile(p.PIDFile)
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// Current is the pid of the primary that owns the listeners now: the pid
// file's if it names a live process, else the started one.
func (p *Primary) Current() int {
	if pid := p.PIDFromFile(); pid > 0 && alive(pid) {
		return pid
	}
	return p.PID
}

// Signal sends sig to the primary pid (only ever one of this test's).
func (p *Primary) Signal(pid int, sig syscall.Signal) {
	p.t.Helper()
	if err := signalOurs(pid, sig, p.Mark, p.Dir); err != nil {
		p.t.Fatalf("signal %v to primary %d: %v", sig, pid, err)
	}
}

// Install puts a testserver variant at DIR/server by rename.
func (p *Primary) Install(variant string) {
	p.t.Helper()
	src, ok := servers[variant]
	if !ok {
		p.t.Fatalf("no testserver variant %q", variant)
	}
	if err := copyFile(src, p.Server, 0o755); err != nil {
		p.t.Fatal(err)
	}
}

// InstallLib renames a fresh copy of a library-mode variant over the
// program a Lib primary runs (DIR/app): what the next SIGHUP deploys.
func (p *Primary) InstallLib(variant string) {
	p.t.Helper()
	src, ok := servers[variant]
	if !ok {
		p.t.Fatalf("no program variant %q", variant)
	}
	if err := copyFile(src, p.Bin, 0o755); err != nil {
		p.t.Fatal(err)
	}
}

// InstallHandoff renames a fresh copy of the handoff binary over DIR/handoff.
func (p *Primary) InstallHandoff() {
	p.t.Helper()
	if err := copyFile(handoffBin, p.Bin, 0o755); err != nil {
		p.t.Fatal(err)
	}
}

// Upgrade is one deploy as seen in the log.
type Upgrade struct {
	Started Event
	End     Event // "upgrade finished", "upgrade aborted" or "upgrade rolled back"
	Gen     int
}

// Aborted reports whether the deploy failed: refused, or rolled back.
func (u Upgrade) Aborted() bool { return u.End.Msg != "upgrade finished" }

// RolledBack reports whether the deploy failed and was rolled back.
func (u Upgrade) RolledBack() bool { return u.End.Msg == "upgrade rolled back" }

// isDeployEnd matches the events that end a deploy.
var isDeployEnd = isMsg("upgrade finished", "upgrade aborted", "upgrade rolled back")

// Deploy sends SIGHUP to the current primary and waits for the deploy it
// starts to finish or abort.
func (p *Primary) Deploy(d time.Duration) Upgrade {
	p.t.Helper()
	mark := p.Log.Len()
	pid := p.Current()
	p.Signal(pid, syscall.SIGHUP)
	return p.AwaitUpgrade(mark, d)
}

// AwaitUpgrade waits for the first "upgrade started" at or after index
// from, and for the end of its generation ("upgrade finished", "upgrade
// aborted" or "upgrade rolled back").
func (p *Primary) AwaitUpgrade(from int, d time.Duration) Upgrade {
	p.t.Helper()
	end := time.Now().Add(d)
	st, ok := p.Log.Wait(from, d, isMsg("upgrade started"))
	if !ok {
		p.t.Fatalf("no \"upgrade started\" within %s\n%s", d, p.Tail(60))
	}
	gen, ok := st.Int("generation")
	if !ok {
		p.t.Fatalf("\"upgrade started\" without an integer generation: %s", st.Raw)
	}
	fin, ok := p.Log.Wait(st.Seq+1, time.Until(end), func(e Event) bool {
		g, ok := e.Int("generation")
		return ok && g == gen && isDeployEnd(e)
	})
	if !ok {
		p.t.Fatalf("generation %d: no end (finished, aborted, rolled back) within %s\n%s", gen, d, p.Tail(80))
	}
	return Upgrade{Started: st, End: fin, Gen: gen}
}

// DeployOK is Deploy, failing the test unless the deploy finished.
func (p *Primary) DeployOK(d time.Duration) Upgrade {
	p.t.Helper()
	u := p.Deploy(d)
	if u.Aborted() {
		p.t.Fatalf("generation %d aborted: %s\n%s", u.Gen, u.End.Raw, p.Tail(60))
	}
	return u
}

// LiveWorkers returns the pids of workers spawned and not exited, per the
// log.
func (p *Primary) LiveWorkers() map[int]Event {
	live := map[int]Event{}
	for _, e := range p.Log.Filter("worker spawned", "worker exited") {
		pid, ok := e.Int("pid")
		if !ok {
			continue
		}
		if e.Msg == "worker spawned" {
			live[pid] = e
		} else {
			delete(live, pid)
		}
	}
	return live
}

// PrimaryPIDs returns every distinct "primary" field in the log.
func (p *Primary) PrimaryPIDs() []int {
	seen := map[int]bool{}
	var out []int
	for _, e := range p.Log.Events() {
		if pid, ok := e.Int("primary"); ok && !seen[pid] {
			seen[pid] = true
			out = append(out, pid)
		}
	}
	sort.Ints(out)
	return out
}

// cleanup kills every process the test caused and waits for the streams.
func (p *Primary) cleanup() {
	t := p.t
	if t.Failed() {
		t.Logf("primary stderr (last 150 lines):\n%s", p.Tail(150))
	}
	roots := append([]int{p.PID, p.PIDFromFile()}, p.PrimaryPIDs()...)
	end := time.Now().Add(10 * time.Second)
	for {
		targets := map[int]bool{}
		for _, pid := range markedPIDs(p.Mark) {
			targets[pid] = true
		}
		for _, r := range roots {
			if r > 0 && alive(r) && ours(r, p.Mark, p.Dir) {
				targets[r] = true
				for _, d := range descendants(r) {
					if ours(d, p.Mark, p.Dir) {
						targets[d] = true
					}
				}
			}
		}
		if len(targets) == 0 {
			break
		}
		if time.Now().After(end) {
			t.Errorf("cleanup: processes still alive after SIGKILL: %v", keys(targets))
			break
		}
		for pid := range targets {
			signalOurs(pid, syscall.SIGKILL, p.Mark, p.Dir)
		}
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		t.Errorf("cleanup: primary %d not reaped", p.PID)
	}
	if !p.waitStreams(5 * time.Second) {
		t.Errorf("cleanup: primary's stdout/stderr still open")
	}
	checkNoRace(t, strings.Join(p.Log.Lines(), "\n"))
	checkSteering(t, p.Log.Events())
}

// checkSteering fails the test if a primary could not steer its groups
// or close a worker's socket: every test runs with the socket layer its
// machine allows, and none may leave a group steered wrong.
func checkSteering(t *testing.T, events []Event) {
	t.Helper()
	for _, e := range events {
		if e.Msg == "cannot steer connections" || e.Msg == "cannot close a worker socket" {
			t.Errorf("socket layer: %s", e.Raw)
		}
	}
}

// waitStreams waits up to d until the primary's stdout and stderr have
// ended (every process holding them has gone) and all they carried has
// been read.
func (p *Primary) waitStreams(d time.Duration) bool {
	waited := make(chan struct{})
	go func() { p.readersWG.Wait(); close(waited) }()
	select {
	case <-waited:
		return true
	case <-time.After(d):
		return false
	}
}

// checkNoRace fails t when a race build (HANDOFF_TEST_RACE=1) reported a
// data race in out, a process's stderr.
func checkNoRace(t *testing.T, out string) {
	t.Helper()
	if !raceBuild {
		return
	}
	if i := strings.Index(out, raceWarning); i >= 0 {
		t.Errorf("a process reported a data race:\n%s", out[max(0, i-200):])
	}
}

func keys(m map[int]bool) []int {
	var out []int
	for k := range m {
		out = append(out, k)
	}
	sort.Ints(out)
	return out
}

// Reply is a parsed testserver answer: "<version> pid=<pid> worker=<slot> gen=<generation>".
type Reply struct {
	Version         string
	PID, Slot, Gen  int
	Status          int
	Body            string
	ConnectionError error
}

func parseReply(status int, body string) Reply {
	r := Reply{Status: status, Body: body, PID: -1, Slot: -1, Gen: -1}
	f := strings.Fields(body)
	if len(f) > 0 {
		r.Version = f[0]
	}
	for _, kv := range f {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		n, err := strconv.Atoi(v)
		if err != nil {
			continue
		}
		switch k {
		case "pid":
			r.PID = n
		case "worker":
			r.Slot = n
		case "gen":
			r.Gen = n
		}
	}
	return r
}

// freshClient makes every request on a new connection.
func freshClient(timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{DisableKeepAlives: true}}
}

// unixClient talks HTTP over the unix socket at path.
func unixClient(path string, timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
}

// get does one GET on a new connection.
func get(c *http.Client, url string) (int, string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(b), err
}

// WaitServing polls base (http://ADDR) with new connections until only
// version answers: 20 answers in a row from it, with every one of the
// primary's worker slots (or, for a program that does not name its slot,
// as many distinct pids) among them. It fails the test after d.
func (p *Primary) WaitServing(base, version string, d time.Duration) {
	p.t.Helper()
	p.WaitServingVia(freshClient(2*time.Second), base, version, d)
}

// WaitServingVia is WaitServing with the client c (e.g. unixClient).
func (p *Primary) WaitServingVia(c *http.Client, base, version string, d time.Duration) {
	p.t.Helper()
	end := time.Now().Add(d)
	streak := 0
	slots := map[int]bool{}
	var last string
	for n := 0; n < 2000; n++ {
		if time.Now().After(end) {
			break
		}
		status, body, err := get(c, strings.TrimSuffix(base, "/")+"/")
		r := parseReply(status, body)
		if err == nil && status == 200 && r.Version == version {
			streak++
			// A program that does not name its slot counts by pid.
			if r.Slot >= 0 {
				slots[r.Slot] = true
			} else {
				slots[-1-r.PID] = true
			}
			if streak >= 20 && len(slots) >= p.Workers {
				return
			}
			continue
		}
		streak, slots = 0, map[int]bool{}
		if err != nil {
			last = err.Error()
		} else {
			last = fmt.Sprintf("%d %q", status, body)
		}
		time.Sleep(10 * time.Millisecond)
	}
	p.t.Fatalf("%s: version %s not the only one served by all %d workers within %s (streak %d, slots %v, last other answer: %s)",
		base, version, p.Workers, d, streak, slots, last)
}

// checkPrimaryField checks that every event carries "primary" naming one
// of the given pids.
func checkPrimaryField(t *testing.T, events []Event, pids ...int) {
	t.Helper()
	ok := map[int]bool{}
	for _, p := range pids {
		ok[p] = true
	}
	bad := 0
	for _, e := range events {
		pid, has := e.Int("primary")
		if !has || !ok[pid] {
			if bad < 5 {
				t.Errorf("event without \"primary\" in %v: %s", pids, e.Raw)
			}
			bad++
		}
	}
	if bad > 5 {
		t.Errorf("... %d such events in all", bad)
	}
}

// checkInvariant replays the worker events and checks, after the first
// "primary ready" and until "shutdown started", that at every event at
// least n workers are ready and neither retiring nor exited, and at most
// n+1 are spawned and neither retiring nor exited. The one exception is
// the documented one: after a ready worker exits unasked (a crash), one
// ready worker fewer, until a worker of that primary's slot is ready
// again. A scale moves n: from "scale started" to its end, at least the
// smaller of the two sizes ready and at most the larger (+1) running;
// after "scale finished" n is the new size ("scale aborted": the old one).
func checkInvariant(t *testing.T, events []Event, n int) {
	t.Helper()
	checkInvariantSurge(t, events, n, 1)
}

// checkInvariantSurge is checkInvariant for a primary run with --surge k:
// at most n+k spawned and neither retiring nor exited.
func checkInvariantSurge(t *testing.T, events []Event, n, k int) {
	t.Helper()
	type ws struct {
		spawned, ready, retiring, exited bool
		primary, slot                    int
	}
	type slotKey struct{ primary, slot int }
	crashed := map[slotKey]bool{}
	workers := map[int]*ws{}
	get := func(pid int) *ws {
		w := workers[pid]
		if w == nil {
			w = &ws{}
			workers[pid] = w
		}
		return w
	}
	checking := false
	violations := 0
	lo, hi := n, n // ready at least lo, running at most hi+1
	for i, e := range events {
		pid, hasPID := e.Int("pid")
		switch e.Msg {
		case "scale started":
			lo, hi = min(lo, e.Int0("to")), max(hi, e.Int0("to"))
		case "scale finished":
			lo, hi = e.Int0("to"), e.Int0("to")
		case "scale aborted":
			lo, hi = e.Int0("from"), e.Int0("from")
		case "worker spawned":
			if hasPID {
				// A new process: its pid may be that of one long gone
				// (pids wrap in a long run).
				workers[pid] = &ws{spawned: true, primary: e.Int0("primary"), slot: e.Int0("slot")}
			}
		case "worker ready":
			if hasPID {
				get(pid).ready = true
				delete(crashed, slotKey{e.Int0("primary"), e.Int0("slot")})
			}
		case "worker retiring":
			if hasPID {
				get(pid).retiring = true
			}
		case "worker reinstated":
			// The old worker that stood by a deploy's probation takes its
			// slot back: it was ready all along.
			delete(crashed, slotKey{e.Int0("primary"), e.Int0("slot")})
		case "worker exited":
			if hasPID {
				w := get(pid)
				if w.ready && !w.retiring && !w.exited && e.Str("level") == "warn" {
					crashed[slotKey{w.primary, w.slot}] = true
				}
				w.exited = true
			}
		case "primary ready":
			checking = true
		case "shutdown started":
			return
		default:
			if !checking {
				continue
			}
		}
		if strings.HasPrefix(e.Msg, "worker ") && !hasPID && e.Msg != "worker restart scheduled" {
			t.Errorf("worker event without an integer pid: %s", e.Raw)
		}
		if !checking {
			continue
		}
		serving, running := 0, 0
		for _, w := range workers {
			if w.retiring || w.exited {
				continue
			}
			if w.spawned {
				running++
			}
			if w.ready {
				serving++
			}
		}
		if serving < lo-len(crashed) || running > hi+k {
			violations++
			if violations <= 3 {
				var ctx []string
				for _, c := range events[max(i-8, 0) : i+1] {
					ctx = append(ctx, "  "+c.Raw)
				}
				t.Errorf("invariant broken at event %d (%q pid=%d): ready-and-serving=%d (want >= %d), spawned-and-not-retiring=%d (want <= %d); events up to it:\n%s",
					i, e.Msg, pid, serving, lo-len(crashed), running, hi+k, strings.Join(ctx, "\n"))
			}
		}
	}
	if !checking {
		t.Errorf("no \"primary ready\" in the event stream")
	}
	if violations > 3 {
		t.Errorf("invariant broken at %d events in all", violations)
	}
}

// writeBytes is a tiny helper for files a test needs.
func writeBytes(t *testing.T, path string, b []byte, perm os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, b, perm); err != nil {
		t.Fatal(err)
	}
}

// startCmd starts cmd, retrying while its executable is still open for
// writing in a process that another test forked meanwhile (ETXTBSY,
// golang/go#22315: the copy's fd lives in the child until it execs). It
// returns the Cmd that started; only *os.File stdio may be set.
func startCmd(cmd *exec.Cmd) (*exec.Cmd, error) {
	end := time.Now().Add(5 * time.Second)
	for {
		err := cmd.Start()
		if err == nil || !errors.Is(err, syscall.ETXTBSY) || time.Now().After(end) {
			return cmd, err
		}
		time.Sleep(10 * time.Millisecond)
		cmd = &exec.Cmd{Path: cmd.Path, Args: cmd.Args, Env: cmd.Env, Dir: cmd.Dir, Stdin: cmd.Stdin,
			Stdout: cmd.Stdout, Stderr: cmd.Stderr, ExtraFiles: cmd.ExtraFiles, SysProcAttr: cmd.SysProcAttr}
	}
}
