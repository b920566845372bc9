//go:build linux

package integration

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// outLine is one line of a worker as it came out of handoff.
type outLine struct {
	stream    string // "stdout" or "stderr"
	index     int    // position among the stream's lines
	slot, pid int    // -1 when the mode does not say (raw)
	gen       int    // -1 when the mode does not say
	primary   int    // the primary that forwarded it; 0 when not said
	text      string // the line, or the piece of a cut line
	partial   bool   // the line goes on in the next piece
	continued bool   // this piece goes on from the previous one
	binary    []byte // json: the exact bytes of a line that is not UTF-8
}

var prefixRE = regexp.MustCompile(`^w(\d+):(\d+)([|+]) `)

// workerLines sorts what a primary (and its successors) wrote into the
// workers' lines of each stream, failing the test on any line that is
// neither one of handoff's own events nor a worker's line as mode writes
// it. In raw mode stdout is returned as one text (its lines are the
// workers' own, unlabelled, a last line with no newline runs into the
// next).
func workerLines(t *testing.T, mode string, stdout, stderr []string) (lines []outLine, rawStdout string) {
	t.Helper()
	bad := 0
	last := map[string]int{} // pid/stream → index in lines of its last line
	fail := func(format string, a ...any) {
		if bad++; bad <= 5 {
			t.Errorf(format, a...)
		}
	}
	for _, s := range []struct {
		name  string
		lines []string
	}{{"stdout", stdout}, {"stderr", stderr}} {
		if mode == "raw" && s.name == "stdout" {
			rawStdout = strings.Join(s.lines, "\n")
			continue
		}
		for i, l := range s.lines {
			ev, isEvent := parseEvent(l)
			if isEvent && ev.Msg != "worker output" {
				if s.name == "stdout" {
					fail("a handoff event on stdout: %s", l)
				}
				continue
			}
			o := outLine{stream: s.name, index: i, slot: -1, pid: -1, gen: -1}
			switch {
			case mode == "json":
				if !isEvent {
					fail("%s line %d is not a JSON object: %.200q", s.name, i, l)
					continue
				}
				o.slot, o.pid, o.gen, o.primary = ev.Int0("slot"), ev.Int0("pid"), ev.Int0("generation"), ev.Int0("primary")
				o.text, o.partial, o.continued = ev.Str("line"), ev.F["partial"] == true, ev.F["continued"] == true
				if ev.Str("stream") != s.name {
					fail("%s event with stream %q: %s", s.name, ev.Str("stream"), l)
				}
				if b64 := ev.Str("line_base64"); b64 != "" {
					o.binary, _ = base64.StdEncoding.DecodeString(b64)
				}
			case mode == "prefix":
				m := prefixRE.FindStringSubmatch(l)
				if m == nil {
					fail("%s line %d has no worker prefix: %.200q", s.name, i, l)
					continue
				}
				o.slot, _ = strconv.Atoi(m[1])
				o.pid, _ = strconv.Atoi(m[2])
				o.continued = m[3] == "+"
				o.text = l[len(m[0]):]
				// The piece before, of the same worker and stream, goes
				// on here (other workers' lines may come in between).
				if i, ok := last[fmt.Sprint(o.pid, s.name)]; ok && o.continued {
					lines[i].partial = true
				}
				last[fmt.Sprint(o.pid, s.name)] = len(lines)
			default: // raw stderr: the worker's line as it is
				o.text = l
			}
			lines = append(lines, o)
		}
	}
	if bad > 5 {
		t.Errorf("... %d such lines in all", bad)
	}
	return lines, rawStdout
}

// join puts the pieces of cut lines back together: each piece goes on
// the last one of the same worker and stream (other workers' lines may
// come in between).
func join(lines []outLine) []outLine {
	var out []outLine
	open := map[string]int{} // pid/stream → index in out of a line going on
	for _, l := range lines {
		key := fmt.Sprint(l.pid, l.stream)
		if i, ok := open[key]; ok && l.continued {
			out[i].text += l.text
			out[i].partial = l.partial
			if !l.partial {
				delete(open, key)
			}
			continue
		}
		out = append(out, l)
		if l.partial {
			open[key] = len(out) - 1
		}
	}
	return out
}

var chatterRE = regexp.MustCompile(`chatter (\d+) (end|last \d+|\d+)`)

// checkChatter checks, for every worker, that the numbered lines it wrote
// to the stream (texts, in order) came out exactly once each, in order,
// up to its last one and its final line with no newline.
func checkChatter(t *testing.T, stream string, texts []string, pids []int) {
	t.Helper()
	type seen struct {
		next      int
		last, end bool
	}
	got := map[int]*seen{}
	for _, pid := range pids {
		got[pid] = &seen{}
	}
	for _, text := range texts {
		for _, m := range chatterRE.FindAllStringSubmatch(text, -1) {
			pid, _ := strconv.Atoi(m[1])
			s := got[pid]
			if s == nil {
				t.Errorf("%s: chatter of a pid that is no worker: %q", stream, text)
				continue
			}
			switch {
			case m[2] == "end":
				s.end = true
			case strings.HasPrefix(m[2], "last "):
				n, _ := strconv.Atoi(strings.TrimPrefix(m[2], "last "))
				if n != s.next-1 {
					t.Errorf("%s: worker %d says its last line is %d, %d came", stream, pid, n, s.next)
				}
				s.last = true
			default:
				n, _ := strconv.Atoi(m[2])
				if n != s.next {
					t.Errorf("%s: worker %d line %d after %d (lost, repeated or out of order)", stream, pid, n, s.next-1)
				}
				s.next = n + 1
			}
		}
	}
	for pid, s := range got {
		if s.next == 0 || !s.last || !s.end {
			t.Errorf("%s: worker %d: %d numbered lines, last line %v, final line with no newline %v", stream, pid, s.next, s.last, s.end)
		}
	}
}

// post sends body to path on a new connection and returns the answer.
func post(t *testing.T, url, body string) Reply {
	t.Helper()
	resp, err := freshClient(10*time.Second).Post(url, "application/octet-stream", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("POST %s: %d %q", url, resp.StatusCode, b)
	}
	return parseReply(resp.StatusCode, string(b))
}

// TestWorkerOutput: in each --worker-output mode, 2 workers that write
// numbered lines to stdout and stderr all the time, through a deploy, a
// self-upgrade of the primary (the old workers go on writing while they
// drain after the hand-over) and a shutdown: every line comes out exactly
// once, labelled with its worker's slot, pid and generation (json) or slot
// and pid (prefix); each worker's last line, which has no newline, comes
// out at its exit; a line of 200 000 bytes comes out cut in pieces of
// 64 KiB, marked as such, and whole once joined; a line of bytes that are
// not UTF-8 comes out exactly (json: line_base64). With json, every line
// on stdout and stderr is one JSON object.
func TestWorkerOutput(t *testing.T) {
	for _, mode := range []string{"json", "prefix", "raw"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			testWorkerOutput(t, mode)
		})
	}
}

func testWorkerOutput(t *testing.T, mode string) {
	var flags []string
	if mode != "json" { // the harness logs JSON, which makes json the default
		flags = []string{"--worker-output", mode}
	}
	p := StartPrimary(t, Options{Flags: flags, Args: []string{"--chatter", "5ms", "--chatter-drain", "300ms"}})
	p.WaitServing(p.URL(), "v1", 20*time.Second)

	long := strings.Repeat("L", 200_000)
	bin := "\x00\x01\xfe\xff binary \xc3"
	errWriter := post(t, p.URL()+"write?stream=stderr", long+"\n"+bin+"\n")
	outWriter := post(t, p.URL()+"write?stream=stdout", long+"\n")

	p.Install("v2")
	p.DeployOK(30 * time.Second)
	p.InstallHandoff()
	p.Install("v3")
	p.DeployOK(60 * time.Second)
	old := p.PID
	successor := p.waitSuccessor(old, 30*time.Second)
	if st := p.WaitExit(30 * time.Second); st == nil || st.ExitCode() != 0 {
		t.Fatalf("old primary %d after the hand-over: %v", old, st)
	}
	_, ok := p.Log.Wait(0, 0, func(e Event) bool { return e.Msg == "handed over" && e.Int0("primary") == old })
	if !ok {
		t.Fatalf("no \"handed over\" event")
	}
	p.Signal(successor, syscall.SIGTERM)
	for end := time.Now().Add(30 * time.Second); alive(successor); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(end) {
			t.Fatalf("new primary %d still running 30s after TERM", successor)
		}
	}
	// Everything written has been read once both streams end.
	if !p.waitStreams(10 * time.Second) {
		t.Fatalf("the primaries' stdout and stderr still open")
	}

	type worker struct{ slot, gen, primary int }
	workers := map[int]worker{}
	var pids []int
	for _, e := range p.Log.Filter("worker spawned") {
		workers[e.Int0("pid")] = worker{e.Int0("slot"), e.Int0("generation"), e.Int0("primary")}
		pids = append(pids, e.Int0("pid"))
	}
	if len(pids) != 6 {
		t.Errorf("%d workers spawned, want 6 (2 per generation)", len(pids))
	}
	stderrLines := p.Log.Lines()
	lines, rawStdout := workerLines(t, mode, p.Stdout.Lines(), stderrLines)

	// Labels: the worker the line came from.
	if mode != "raw" {
		for _, l := range lines {
			w, ok := workers[l.pid]
			if !ok {
				t.Errorf("%s line labelled with pid %d, no worker: %.200q", l.stream, l.pid, l.text)
				continue
			}
			if l.slot != w.slot || (mode == "json" && (l.gen != w.gen || l.primary != w.primary)) {
				t.Errorf("%s line of worker %d (slot %d, generation %d, primary %d) labelled slot %d generation %d primary %d",
					l.stream, l.pid, w.slot, w.gen, w.primary, l.slot, l.gen, l.primary)
			}
			if m := chatterRE.FindStringSubmatch(l.text); m != nil && m[1] != strconv.Itoa(l.pid) {
				t.Errorf("a line of worker %s labelled pid %d: %q", m[1], l.pid, l.text)
			}
		}
	}
	whole := join(lines)
	texts := map[string][]string{}
	for _, l := range whole {
		texts[l.stream] = append(texts[l.stream], l.text)
	}
	checkChatter(t, "stderr", texts["stderr"], pids)
	if mode == "raw" {
		checkChatter(t, "stdout", []string{rawStdout}, pids)
	} else {
		checkChatter(t, "stdout", texts["stdout"], pids)
	}

	// The old primary forwarded the lines its workers wrote after it had
	// handed their slots over (each drains for --chatter-drain).
	lastHandedOver := -1
	for _, e := range p.Log.Filter("worker retiring") {
		if e.Int0("primary") == old && e.Str("reason") == "handed over" {
			lastHandedOver = max(lastHandedOver, lineIndex(stderrLines, e.Raw))
		}
	}
	if lastHandedOver < 0 {
		t.Errorf("the old primary handed no worker over (no \"worker retiring\" with reason \"handed over\")")
	}
	afterHandOver := 0
	for _, l := range lines {
		if l.stream != "stderr" || !strings.HasPrefix(l.text, "chatter ") {
			continue
		}
		pid, _ := strconv.Atoi(strings.Fields(l.text)[1])
		if workers[pid].primary == old && l.index > lastHandedOver {
			afterHandOver++
		}
	}
	if afterHandOver == 0 {
		t.Errorf("no line of the old primary's workers came after it handed their slots over")
	}

	// The long lines: cut in pieces of at most 64 KiB, marked, whole once
	// joined. In raw mode stdout is the worker's own: untouched.
	for _, c := range []struct {
		stream string
		pid    int
	}{{"stderr", errWriter.PID}, {"stdout", outWriter.PID}} {
		if mode == "raw" {
			if c.stream == "stdout" {
				// The worker wrote it straight into the pipe it shares
				// with the others: whole, but others' lines may cut in.
				if n := strings.Count(rawStdout, "L"); n != len(long) {
					t.Errorf("raw stdout: %d bytes of the long line, want %d", n, len(long))
				}
				continue
			}
			n := 0
			for _, l := range lines {
				if strings.Trim(l.text, "L") == "" && l.text != "" {
					if len(l.text) > 64<<10 {
						t.Errorf("raw stderr: a piece of %d bytes", len(l.text))
					}
					n += len(l.text)
				}
			}
			if n != len(long) {
				t.Errorf("raw stderr: %d bytes of the long line, want %d", n, len(long))
			}
			continue
		}
		pieces, found := 0, false
		for _, l := range lines {
			if l.pid == c.pid && l.stream == c.stream && strings.Trim(l.text, "L") == "" && l.text != "" {
				pieces++
				if len(l.text) > 64<<10 {
					t.Errorf("%s: a piece of %d bytes", c.stream, len(l.text))
				}
			}
		}
		for _, l := range whole {
			found = found || (l.pid == c.pid && l.stream == c.stream && l.text == long)
		}
		if pieces != 4 || !found {
			t.Errorf("%s of worker %d: the long line in %d pieces (want 4), whole once joined: %v", c.stream, c.pid, pieces, found)
		}
	}
	// The line that is not UTF-8.
	foundBin := false
	for _, l := range whole {
		switch mode {
		case "json":
			foundBin = foundBin || (l.pid == errWriter.PID && string(l.binary) == bin)
		case "prefix":
			foundBin = foundBin || (l.pid == errWriter.PID && l.text == bin)
		default:
			foundBin = foundBin || l.text == bin
		}
	}
	if !foundBin {
		t.Errorf("the binary line of worker %d did not come out exactly", errWriter.PID)
	}
}

// lineIndex is the position of line in lines, or -1.
func lineIndex(lines []string, line string) int {
	for i, l := range lines {
		if strings.TrimSpace(l) == line {
			return i
		}
	}
	return -1
}

// TestWorkerOutputFlushedAtExit: a worker writes a burst of lines as it
// exits, and the primary cannot write them all out at once (whatever
// reads its stdout pauses): the primary waits for the last of them before
// it exits itself, and none is lost.
func TestWorkerOutputFlushedAtExit(t *testing.T) {
	t.Parallel()
	fifo := filepath.Join(t.TempDir(), "stdout")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// The reader of the primary's stdout: it pauses for a second at the
	// first line of the burst, while the worker writes the rest and exits.
	var got []string
	read := make(chan struct{})
	go func() {
		defer close(read)
		f, err := os.Open(fifo)
		if err != nil {
			return
		}
		defer f.Close()
		br := bufio.NewReader(f)
		paused := false
		for {
			line, err := br.ReadString('\n')
			if line != "" {
				got = append(got, strings.TrimSuffix(line, "\n"))
				if strings.Contains(line, "| burst 0 ") && !paused {
					paused = true
					time.Sleep(time.Second)
				}
			}
			if err != nil {
				return
			}
		}
	}()
	p := StartPrimary(t, Options{
		Workers: 1,
		Flags:   []string{"--worker-output", "prefix"},
		Wrap:    []string{"/bin/sh", "-c", `exec "$0" "$@" > ` + fifo},
	})
	p.WaitServing(p.URL(), "v1", 20*time.Second)
	// About 100 KB: more than the pipe to the reader holds, less than
	// that and the worker's own pipe together, so the worker writes it
	// all and exits at once.
	var b strings.Builder
	const lines = 2000
	for i := 0; i < lines; i++ {
		fmt.Fprintf(&b, "burst %d %s\n", i, strings.Repeat("x", 40))
	}
	w := post(t, p.URL()+"write?stream=stdout&at=exit", b.String())
	p.Signal(p.PID, syscall.SIGTERM)
	if st := p.WaitExit(30 * time.Second); st == nil || st.ExitCode() != 0 {
		t.Fatalf("after TERM: %v", st)
	}
	select {
	case <-read:
	case <-time.After(10 * time.Second):
		t.Fatal("the primary's stdout still open")
	}
	next := 0
	for _, l := range got {
		var i int
		if _, err := fmt.Sscanf(l, fmt.Sprintf("w0:%d| burst %%d", w.PID), &i); err != nil {
			continue
		}
		if i != next {
			t.Fatalf("line %d after %d", i, next-1)
		}
		next++
	}
	if next != lines {
		t.Errorf("%d of the %d lines written at exit came out", next, lines)
	}
}
