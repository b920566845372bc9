package workerpool

import (
	"bytes"
	"encoding/base64"
	"io"
	"os"
	"reflect"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sys/unix"
)

// OutputMode says how the workers' stdout and stderr reach the primary's.
type OutputMode string

const (
	// OutputPrefix writes every line with the worker's slot and pid in
	// front, "w0:4242| " (a piece that continues a line cut at MaxLine has
	// "w0:4242+ "): stdout lines to Output.Stdout, stderr lines to
	// Output.Stderr.
	OutputPrefix OutputMode = "prefix"
	// OutputJSON makes every line one JSON event (msg "worker output")
	// with slot, pid, generation, stream ("stdout" or "stderr") and line;
	// see Output.
	OutputJSON OutputMode = "json"
	// OutputRaw leaves the lines as they are: the workers inherit the
	// primary's stdout itself (no copy), and their stderr lines are copied
	// through unchanged.
	OutputRaw OutputMode = "raw"
)

// ParseOutputMode checks a mode's name.
func ParseOutputMode(s string) (OutputMode, bool) {
	switch m := OutputMode(s); m {
	case OutputPrefix, OutputJSON, OutputRaw:
		return m, true
	}
	return "", false
}

// MaxLine bounds the lines Output forwards: a longer line is cut into
// pieces of MaxLine bytes, each written as a line of its own and marked
// (json: "partial" on every piece but the last, "continued" on every piece
// but the first; prefix: "+" after the label of a continuing piece).
const MaxLine = 64 << 10

// writeChunk is the most Output puts into one write of whole lines: a
// write of at most PIPE_BUF bytes to a pipe is atomic, so lines are never
// torn even by another process writing to the same pipe (the new primary
// of a self-upgrade, still forwarding its own workers' output).
const writeChunk = 4096

// Output forwards the workers' stdout and stderr line by line, labelled
// with the worker they come from. Each stream of each worker has its own
// goroutine and a buffer of at most MaxLine bytes; a worker that writes
// faster than the lines can be written out is slowed down by its pipe,
// never dropped. Lines of different workers never interleave: each
// destination is written under a mutex, whole lines at a time.
//
// In json mode, each line is an event encoded by Encoder, as the
// primary's own events are (time and level keys, msg "worker output"),
// with Fields and then: slot, pid, generation, stream ("stdout" or
// "stderr"), line (the text without its newline; bytes that are not UTF-8
// become U+FFFD), line_base64 (the exact bytes, only when the line is not
// valid UTF-8), partial (true when the line goes on in the next event)
// and continued (true when this event goes on from the previous one).
type Output struct {
	Mode OutputMode
	// Stdout and Stderr receive the lines of the workers' stdout and
	// stderr; nil means os.Stdout and os.Stderr. Whoever else writes to
	// the same destination should hold the same lock: pass a writer that
	// takes it (zapcore.Lock), as the primary does for its log.
	Stdout, Stderr io.Writer
	// Encoder encodes the json events; nil means zap's production JSON
	// encoder with ISO 8601 times (handoff's --log-format json).
	Encoder zapcore.Encoder
	// Fields are added to every json event (the primary's pid).
	Fields []zapcore.Field
	// MaxLine, if positive, replaces the package's MaxLine (for tests).
	MaxLine int

	once     sync.Once
	out, err *outWriter
	wg       sync.WaitGroup
	// progress counts reads and writes, for Wait.
	progress atomic.Uint64
}

// outWriter is one destination, written whole lines at a time.
type outWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (w *outWriter) write(b []byte) {
	w.mu.Lock()
	w.w.Write(b) // a destination gone (EPIPE) drops the line, never blocks the worker
	w.mu.Unlock()
}

func (o *Output) init() {
	o.once.Do(func() {
		if o.Mode == "" {
			o.Mode = OutputPrefix
		}
		if o.Stdout == nil {
			o.Stdout = os.Stdout
		}
		if o.Stderr == nil {
			o.Stderr = os.Stderr
		}
		if o.Encoder == nil {
			o.Encoder = DefaultOutputEncoder()
		}
		o.out = &outWriter{w: o.Stdout}
		o.err = o.out
		if !sameWriter(o.Stdout, o.Stderr) {
			o.err = &outWriter{w: o.Stderr}
		}
	})
}

// DefaultOutputEncoder is the encoder of Output's json events when none is
// given: zap's production JSON encoder with ISO 8601 times and durations
// as text, as handoff's --log-format json.
func DefaultOutputEncoder() zapcore.Encoder {
	ec := zap.NewProductionEncoderConfig()
	ec.EncodeTime = zapcore.ISO8601TimeEncoder
	ec.EncodeDuration = zapcore.StringDurationEncoder
	return zapcore.NewJSONEncoder(ec)
}

func sameWriter(a, b io.Writer) bool {
	ta := reflect.TypeOf(a)
	return ta == reflect.TypeOf(b) && ta.Comparable() && a == b
}

func (o *Output) maxLine() int {
	if o.MaxLine > 0 {
		return o.MaxLine
	}
	return MaxLine
}

// Wait waits until every worker's output has been forwarded up to its
// end, or until none has made progress for idle (a destination that
// blocks, a pipe still held by a process a worker left behind).
func (o *Output) Wait(idle time.Duration) {
	if o == nil {
		return
	}
	done := make(chan struct{})
	go func() {
		o.wg.Wait()
		close(done)
	}()
	t := time.NewTicker(idle)
	defer t.Stop()
	last := o.progress.Load()
	for {
		select {
		case <-done:
			return
		case <-t.C:
			now := o.progress.Load()
			if now == last {
				return
			}
			last = now
		}
	}
}

// workerStdout is the pipe a worker's stdout goes into, or nothing in raw
// mode.
type workerStdout struct {
	r *os.File // the primary's end; nil once forwarding took it
	w int      // the worker's end, -1 for none
}

// stdoutPipe makes the pipe for a worker's stdout; with no Output or in
// raw mode there is none and the worker inherits the primary's stdout.
func (o *Output) stdoutPipe() (*workerStdout, error) {
	ws := &workerStdout{w: -1}
	if o == nil {
		return ws, nil
	}
	o.init()
	if o.Mode == OutputRaw {
		return ws, nil
	}
	var p [2]int
	if err := pipeCloexec(p[:]); err != nil {
		return nil, err
	}
	ws.r, ws.w = os.NewFile(uintptr(p[0]), "worker-stdout"), p[1]
	return ws, nil
}

// fd is what the worker gets as its fd 1.
func (ws *workerStdout) fd(inherited *os.File) uintptr {
	if ws.w >= 0 {
		return uintptr(ws.w)
	}
	return inherited.Fd()
}

// close closes the worker's end (the worker has its own copy once forked)
// and the primary's, unless forwarding took it.
func (ws *workerStdout) close() {
	if ws.w >= 0 {
		unix.Close(ws.w)
		ws.w = -1
	}
	if ws.r != nil {
		ws.r.Close()
		ws.r = nil
	}
}

// forward starts copying a started worker's stdout (when it has a pipe of
// its own) and stderr. The stderr copy feeds p's tail and closes p.copied
// at its end.
func (o *Output) forward(p *osProcess, slot, gen int, stdout *workerStdout, stderr *os.File) {
	o.init()
	if stdout.r != nil {
		r := stdout.r
		stdout.r = nil
		o.wg.Add(1)
		go func() {
			defer o.wg.Done()
			o.copy(r, o.label(slot, p.pid, gen, "stdout"), o.out, nil)
		}()
	}
	o.wg.Add(1)
	go func() {
		defer o.wg.Done()
		defer close(p.copied)
		o.copy(stderr, o.label(slot, p.pid, gen, "stderr"), o.err, p.tail.Write)
	}()
}

// label is what is written with each line of one stream of one worker.
type label struct {
	prefix []byte          // prefix mode: "w0:4242"
	enc    zapcore.Encoder // json mode: Encoder with Fields, slot, pid, generation and stream added
	fields []zapcore.Field // json mode: room for each line's fields
}

func (o *Output) label(slot, pid, gen int, stream string) *label {
	l := &label{}
	switch o.Mode {
	case OutputPrefix:
		l.prefix = []byte("w" + strconv.Itoa(slot) + ":" + strconv.Itoa(pid))
	case OutputJSON:
		// The fields every line has are encoded once, into a clone of
		// the encoder of its own.
		l.enc = o.Encoder.Clone()
		fields := []zapcore.Field{zap.Int("slot", slot), zap.Int("pid", pid), zap.Int("generation", gen), zap.String("stream", stream)}
		for _, f := range slices.Concat(o.Fields, fields) {
			f.AddTo(l.enc)
		}
		l.fields = make([]zapcore.Field, 0, 4)
	}
	return l
}

// initialBuffer is a stream's buffer until a longer line needs more (up
// to MaxLine).
const initialBuffer = 16 << 10

// copy forwards r to w line by line until r ends, then writes what is left
// of a last line that had no newline. tail, if set, gets every byte read.
func (o *Output) copy(r *os.File, l *label, w *outWriter, tail func([]byte)) {
	defer r.Close()
	maxLine := o.maxLine()
	buf := make([]byte, min(initialBuffer, maxLine+1))
	n := 0 // bytes held in buf: the start of a line
	c := &lineCopy{o: o, l: l, w: w}
	for {
		m, err := r.Read(buf[n:])
		if o.Mode == OutputJSON {
			c.now = time.Now()
		}
		if m > 0 {
			o.progress.Add(1)
			if tail != nil {
				tail(buf[n : n+m])
			}
		}
		buf, n = c.lines(buf, n+m, maxLine)
		if err != nil {
			if n > 0 {
				c.emit(buf[:n], false)
			}
			c.flush()
			return
		}
		c.flush()
	}
}

// lineCopy is the writing side of one copy: the lines formatted and not
// written yet, and what the next line continues.
type lineCopy struct {
	o       *Output
	l       *label
	w       *outWriter
	out     []byte // formatted lines not written yet
	scratch []byte
	now     time.Time // when the lines were read, one clock reading per read
	cont    bool      // the next line is the rest of a line cut before
}

// lines emits every whole line of buf[:n], and makes room for more: the
// rest moves to the start of buf; a buf full without a newline grows, up
// to one byte more than maxLine (a line of exactly maxLine bytes and its
// newline fit, and are not cut), and past that a piece of maxLine bytes
// goes now. It returns buf and how many bytes it holds.
func (c *lineCopy) lines(buf []byte, n, maxLine int) ([]byte, int) {
	limit := maxLine + 1
	start := 0
	for {
		i := bytes.IndexByte(buf[start:n], '\n')
		if i < 0 {
			break
		}
		c.emit(buf[start:start+i], false)
		start += i + 1
	}
	switch {
	case start > 0:
		n = copy(buf, buf[start:n])
	case n == len(buf) && n < limit:
		buf = append(buf, make([]byte, min(2*len(buf), limit)-len(buf))...)
	case n == len(buf):
		// A line longer than maxLine: a piece goes now.
		c.emit(buf[:maxLine], true)
		buf[0] = buf[maxLine]
		n = 1
	}
	return buf, n
}

// emit formats line (partial: a piece of a longer line) after the lines
// not written yet; past writeChunk bytes, those are written first.
func (c *lineCopy) emit(line []byte, partial bool) {
	before := len(c.out)
	c.out, c.scratch = c.o.appendLine(c.out, c.scratch, c.l, line, c.now, c.cont, partial)
	c.cont = partial
	if len(c.out) > writeChunk && before > 0 {
		// Write what came before; this line starts the next write.
		c.w.write(c.out[:before])
		c.out = append(c.out[:0], c.out[before:]...)
	}
}

// flush writes the lines not written yet.
func (c *lineCopy) flush() {
	if len(c.out) > 0 {
		c.w.write(c.out)
		c.o.progress.Add(1)
		c.out = c.out[:0]
	}
}

// appendLine formats one line (or piece of a line) onto out.
func (o *Output) appendLine(out, scratch []byte, l *label, line []byte, now time.Time, cont, partial bool) ([]byte, []byte) {
	switch o.Mode {
	case OutputPrefix:
		out = append(out, l.prefix...)
		if cont {
			out = append(out, "+ "...)
		} else {
			out = append(out, "| "...)
		}
		out = append(out, line...)
		return append(out, '\n'), scratch
	case OutputJSON:
		fields := append(l.fields[:0], zap.ByteString("line", line))
		if !utf8.Valid(line) {
			scratch = base64.StdEncoding.AppendEncode(scratch[:0], line)
			fields = append(fields, zap.ByteString("line_base64", scratch))
		}
		if partial {
			fields = append(fields, zap.Bool("partial", true))
		}
		if cont {
			fields = append(fields, zap.Bool("continued", true))
		}
		buf, err := l.enc.EncodeEntry(zapcore.Entry{Level: zapcore.InfoLevel, Time: now, Message: "worker output"}, fields)
		if err != nil {
			return out, scratch
		}
		out = append(out, buf.Bytes()...)
		buf.Free()
		return out, scratch
	default: // raw
		out = append(out, line...)
		return append(out, '\n'), scratch
	}
}
