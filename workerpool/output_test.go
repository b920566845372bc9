//go:build linux

package workerpool

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/handoff-dev/handoff/internal/testutil"
)

// copyThrough runs one stream of input through o's copy and returns what
// it wrote.
func copyThrough(t *testing.T, o *Output, input []byte) string {
	t.Helper()
	var dst testutil.SyncBuffer
	o.Stdout, o.Stderr = &dst, &dst
	o.init()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		w.Write(input)
		w.Close()
	}()
	o.copy(r, o.label(1, 4242, 3, "stdout"), o.out, nil)
	return dst.String()
}

func TestOutputPrefix(t *testing.T) {
	o := &Output{Mode: OutputPrefix, MaxLine: 8}
	got := copyThrough(t, o, []byte("one\n\ntwo words\n12345678\n123456789abcdefghij\nbin\x00\xff\nlast"))
	want := "w1:4242| one\n" +
		"w1:4242| \n" +
		"w1:4242| two word\nw1:4242+ s\n" +
		"w1:4242| 12345678\n" + // exactly MaxLine: not cut
		"w1:4242| 12345678\nw1:4242+ 9abcdefg\nw1:4242+ hij\n" +
		"w1:4242| bin\x00\xff\n" +
		"w1:4242| last\n" // the last line, with no newline, at EOF
	if got != want {
		t.Errorf("prefix output:\n%q\nwant\n%q", got, want)
	}
}

func TestOutputRaw(t *testing.T) {
	o := &Output{Mode: OutputRaw, MaxLine: 8}
	got := copyThrough(t, o, []byte("one\n123456789\nlast"))
	if want := "one\n12345678\n9\nlast\n"; got != want {
		t.Errorf("raw output %q, want %q", got, want)
	}
}

// outEvent is one json event as a log pipeline reads it.
type outEvent struct {
	Level      string `json:"level"`
	TS         string `json:"ts"`
	Msg        string `json:"msg"`
	Primary    int    `json:"primary"`
	Slot       int    `json:"slot"`
	Pid        int    `json:"pid"`
	Generation int    `json:"generation"`
	Stream     string `json:"stream"`
	Line       string `json:"line"`
	LineBase64 string `json:"line_base64"`
	Partial    bool   `json:"partial"`
	Continued  bool   `json:"continued"`
}

func parseEvents(t *testing.T, s string) []outEvent {
	t.Helper()
	var out []outEvent
	for _, line := range strings.Split(strings.TrimSuffix(s, "\n"), "\n") {
		var e outEvent
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("not one JSON object per line: %q: %v", line, err)
		}
		out = append(out, e)
	}
	return out
}

func TestOutputJSON(t *testing.T) {
	o := &Output{Mode: OutputJSON, MaxLine: 8, Fields: []zap.Field{zap.Int("primary", 7)}}
	got := copyThrough(t, o, []byte("one \"quoted\"\n123456789abcdefghij\nbin\x00\xff\x01\nlast"))
	evs := parseEvents(t, got)
	type piece struct {
		line               string
		partial, continued bool
	}
	want := []piece{{`one "quo`, true, false}, {`ted"`, false, true},
		{"12345678", true, false}, {"9abcdefg", true, true}, {"hij", false, true},
		{"bin\x00\ufffd\x01", false, false}, {"last", false, false}}
	if len(evs) != len(want) {
		t.Fatalf("%d events, want %d:\n%s", len(evs), len(want), got)
	}
	for i, e := range evs {
		if e.Msg != "worker output" || e.Level != "info" || e.TS == "" || e.Primary != 7 || e.Slot != 1 || e.Pid != 4242 ||
			e.Generation != 3 || e.Stream != "stdout" {
			t.Errorf("event %d: %+v", i, e)
		}
		if w := want[i]; e.Line != w.line || e.Partial != w.partial || e.Continued != w.continued {
			t.Errorf("event %d: line %q partial %v continued %v, want %+v", i, e.Line, e.Partial, e.Continued, w)
		}
	}
	// Bytes that are not UTF-8 come exactly in line_base64.
	if b, _ := base64.StdEncoding.DecodeString(evs[5].LineBase64); string(b) != "bin\x00\xff\x01" {
		t.Errorf("line_base64 %q decodes to %q", evs[5].LineBase64, b)
	}
	if evs[0].LineBase64 != "" {
		t.Errorf("line_base64 on a UTF-8 line: %+v", evs[0])
	}
}

// The lines of many writers, some of them long, reach one destination
// whole: none is torn by another, none is lost.
func TestOutputLinesNeverInterleave(t *testing.T) {
	var dst testutil.SyncBuffer
	o := &Output{Mode: OutputPrefix, Stdout: &dst, Stderr: &dst}
	o.init()
	const writers, lines = 6, 400
	var wg sync.WaitGroup
	for k := 0; k < writers; k++ {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(2)
		go func() {
			defer wg.Done()
			bw := bufio.NewWriterSize(w, 64<<10)
			for i := 0; i < lines; i++ {
				// Lines from 10 to 10k bytes: several lines per read, and
				// lines beyond PIPE_BUF.
				fmt.Fprintf(bw, "%d %d %s\n", k, i, strings.Repeat(strconv.Itoa(k), (i%5)*(i%5)*300+5))
			}
			bw.Flush()
			w.Close()
		}()
		go func() {
			defer wg.Done()
			o.copy(r, o.label(k, 1000+k, 1, "stdout"), o.out, nil)
		}()
	}
	wg.Wait()
	next := make([]int, writers)
	for _, line := range strings.Split(strings.TrimSuffix(dst.String(), "\n"), "\n") {
		var k, pid, i int
		var body string
		if _, err := fmt.Sscanf(line, "w%d:%d| %d %d %s", &k, &pid, &k, &i, &body); err != nil {
			t.Fatalf("torn line %.200q: %v", line, err)
		}
		if pid != 1000+k || i != next[k] || body != strings.Repeat(strconv.Itoa(k), (i%5)*(i%5)*300+5) {
			t.Fatalf("writer %d: line %d (want %d) torn or out of order: %.200q", k, i, next[k], line)
		}
		next[k]++
	}
	for k, n := range next {
		if n != lines {
			t.Errorf("writer %d: %d lines arrived, want %d", k, n, lines)
		}
	}
}

// blockingWriter holds every write until released.
type blockingWriter struct {
	release chan struct{}
	testutil.SyncBuffer
	writes int
}

func (b *blockingWriter) Write(p []byte) (int, error) {
	<-b.release
	b.writes++
	return b.SyncBuffer.Write(p)
}

// A worker that writes faster than its lines can be written out is held
// by its pipe: nothing is dropped, and the primary reads no further than
// its buffer while the destination is stuck.
func TestOutputBackpressure(t *testing.T) {
	e := newProcEnv(t)
	dst := &blockingWriter{release: make(chan struct{})}
	e.l.Output = &Output{Mode: OutputPrefix, Stdout: dst, Stderr: &testutil.SyncBuffer{}}
	const lines = 100000
	spec := e.spec(1)
	spec.Path = "/bin/sh"
	// seq writes its 100000 lines in a few milliseconds when nothing
	// holds it.
	spec.Args = []string{"sh", "-c", "exec seq 0 " + strconv.Itoa(lines-1)}
	p := e.launch(t, 0, spec)
	// The destination is stuck: the worker fills its pipe, and then
	// waits.
	time.Sleep(300 * time.Millisecond)
	select {
	case <-p.Done():
		t.Fatalf("the worker wrote %d lines through a stuck destination: %+v", lines, p.Exit())
	default:
	}
	close(dst.release)
	waitChan(t, p.Done(), "the worker's exit")
	e.l.Output.Wait(time.Second)
	got := strings.Split(strings.TrimSuffix(dst.String(), "\n"), "\n")
	if len(got) != lines {
		t.Fatalf("%d lines arrived, want %d", len(got), lines)
	}
	prefix := fmt.Sprintf("w0:%d| ", p.Pid())
	for i, l := range got {
		if l != prefix+strconv.Itoa(i) {
			t.Fatalf("line %d is %q", i, l)
		}
	}
}

// Real workers: each stream of each worker labelled with its slot, pid and
// generation; a last line with no newline is flushed at the exit; the
// stderr tail of an exit report still works.
func TestOutputLaunchJSON(t *testing.T) {
	e := newProcEnv(t)
	var stdout, stderr testutil.SyncBuffer
	e.l.Output = &Output{Mode: OutputJSON, Stdout: &stdout, Stderr: &stderr, Fields: []zap.Field{zap.Int("primary", os.Getpid())}}
	var procs []Process
	for slot := 0; slot < 2; slot++ {
		spec := e.spec(5)
		spec.Path = "/bin/sh"
		spec.Args = []string{"sh", "-c", `echo "out $HANDOFF_WORKER"; echo "err $HANDOFF_WORKER" >&2; printf 'partial %s' $HANDOFF_WORKER >&2; exit 3`}
		procs = append(procs, e.launch(t, slot, spec))
	}
	for _, p := range procs {
		waitChan(t, p.Done(), "exit")
	}
	e.l.Output.Wait(time.Second)
	for slot, p := range procs {
		if x := p.Exit(); x.Code != 3 || x.StderrTail != fmt.Sprintf("err %d\npartial %d", slot, slot) {
			t.Errorf("slot %d exit %+v", slot, x)
		}
	}
	check := func(name, text string, want map[int][]string) {
		got := map[int][]string{}
		for _, ev := range parseEvents(t, text) {
			slot := ev.Slot
			if ev.Pid != procs[slot].Pid() || ev.Generation != 5 || ev.Stream != name || ev.Primary != os.Getpid() {
				t.Errorf("%s event %+v", name, ev)
			}
			got[slot] = append(got[slot], ev.Line)
		}
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s lines %v, want %v", name, got, want)
		}
	}
	check("stdout", stdout.String(), map[int][]string{0: {"out 0"}, 1: {"out 1"}})
	check("stderr", stderr.String(), map[int][]string{0: {"err 0", "partial 0"}, 1: {"err 1", "partial 1"}})
}

// Raw mode: the worker's stdout is the destination file itself, its
// stderr lines pass unchanged.
func TestOutputLaunchRaw(t *testing.T) {
	e := newProcEnv(t)
	var stderr testutil.SyncBuffer
	e.l.Output = &Output{Mode: OutputRaw, Stderr: &stderr}
	spec := e.spec(1)
	spec.Path = "/bin/sh"
	spec.Args = []string{"sh", "-c", `echo out; echo err >&2; exec ls -l /proc/self/fd/1`}
	p := e.launch(t, 0, spec)
	waitChan(t, p.Done(), "exit")
	e.l.Output.Wait(time.Second)
	out, err := os.ReadFile(e.l.Stdout.Name())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(out), "out\n") || !strings.Contains(string(out), "-> "+e.l.Stdout.Name()) {
		t.Errorf("raw stdout %q: not the inherited file", out)
	}
	if got := stderr.String(); got != "err\n" {
		t.Errorf("raw stderr %q", got)
	}
	if !bytes.Contains(out, []byte("out")) {
		t.Errorf("stdout %q", out)
	}
}
