// Package loadgen is a bounded HTTP load generator that counts every failure.
//
// It exists to prove zero-loss claims, so it is built to make failures
// visible rather than to hide them:
//
//   - every request is a POST whose body is an io.Reader of an unexported
//     type that only implements Read, so http.NewRequest sets no GetBody and
//     net/http's Transport cannot silently replay a request that failed on a
//     reused connection;
//   - any transport error, any error while reading the response body and any
//     non-2xx status is a failure, classified in Result.FailuresByKind;
//   - stopping a run (Stop, Duration, MaxRequests or the parent context) only
//     stops clients from starting new requests: requests already in flight
//     run to completion, bounded by Config.Timeout, so every issued request
//     is counted either as a success or as a failure, never as "aborted".
//
// A run is always bounded: by Duration (required), by MaxRequests and, per
// request, by Timeout.
package loadgen

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Defaults applied by Start.
const (
	DefaultMaxRequests = 1_000_000
	DefaultTimeout     = 5 * time.Second
)

// Failure kinds used as keys of Result.FailuresByKind. A non-2xx status is
// counted as "status_<code>", e.g. "status_503".
const (
	KindConnReset  = "conn_reset"
	KindEOF        = "eof"
	KindRefused    = "refused"
	KindTimeout    = "timeout"
	KindBrokenPipe = "broken_pipe"
	KindOther      = "other"
)

const (
	maxFirstErrors = 10
	maxMapKeys     = 1000     // distinct Versions/PIDs keys kept; the rest go to overflowKey
	overflowKey    = "<more>" // key that collects values past maxMapKeys
	maxBodyKept    = 4096     // bytes of an OK body parsed for version/pid
)

// Config describes a run. URL and Duration are required.
type Config struct {
	URL         string        // http://127.0.0.1:PORT/path
	KeepAlive   int           // clients reusing one connection each
	NewConn     int           // clients opening a new connection per request (DisableKeepAlives)
	Duration    time.Duration // hard stop (required > 0)
	MaxRequests int64         // hard stop on total requests (0 = 1_000_000)
	Timeout     time.Duration // per request, default 5s
	Pause       time.Duration // optional pause between requests per client
	// UnixSocket, if set, is the path of a unix stream socket every
	// connection is made to instead of URL's host (which then only names
	// the Host header).
	UnixSocket string
	// Observe, if set, is told of every request as it completes, from the
	// clients' goroutines (concurrently): for a test that asks which
	// version answered when.
	Observe func(Sample)
}

// Sample is one completed request (Config.Observe).
type Sample struct {
	Begin, End time.Time
	// Version and PID are as Result counts them ("" if absent); Err is
	// the failure, nil for an answer.
	Version, PID string
	Err          error
}

// Result holds the figures of a run.
type Result struct {
	Requests       int64            // completed requests: successes + failures
	Failures       int64            // transport errors, body read errors and non-2xx statuses
	FailuresByKind map[string]int64 // "conn_reset", "eof", "refused", "timeout", "broken_pipe", "status_NNN", "other"
	FirstErrors    []string         // up to 10 error texts, in the order they happened
	Versions       map[string]int64 // first whitespace token of each OK response body
	PIDs           map[string]int64 // value of the "pid=" token of each OK body that has one
	// Latency of completed requests (successes and failures), from fixed
	// log-linear buckets (relative error below 1/16); never above Max.
	P50, P99, P999, Max time.Duration
	Elapsed             time.Duration // since Start, until the run ended (or now, for Snapshot)
	// Steady and Windows split the run by the windows opened with
	// BeginWindow and closed with EndWindow (e.g. the time a deploy
	// takes). A request belongs to Windows if any part of it, from start
	// to completion, fell in a window; to Steady otherwise. With no window,
	// Steady holds every request.
	Steady, Windows Phase
}

// Phase holds the figures of one part of a run (see Result.Steady).
type Phase struct {
	Requests       int64 // requests that belong to the phase, successes and failures
	Failures       int64
	FailuresByKind map[string]int64
	// Latency of the phase's requests.
	P50, P99, P999, Max time.Duration
	// Duration is the time the run spent in the phase; Completed counts
	// the requests that completed during it, so Completed/Duration is the
	// phase's throughput.
	Duration  time.Duration
	Completed int64
}

// RPS is the phase's throughput: requests completed per second of it.
func (p Phase) RPS() float64 {
	if p.Duration <= 0 {
		return 0
	}
	return float64(p.Completed) / p.Duration.Seconds()
}

// String is a one-line summary, handy in test logs.
func (r Result) String() string {
	return fmt.Sprintf("requests=%d failures=%d kinds=%v versions=%v pids=%d p50=%v p99=%v p999=%v max=%v elapsed=%v first_errors=%q",
		r.Requests, r.Failures, r.FailuresByKind, r.Versions, len(r.PIDs),
		r.P50, r.P99, r.P999, r.Max, r.Elapsed.Round(time.Millisecond), r.FirstErrors)
}

// Run is a load run started by Start.
type Run struct {
	cfg    Config
	start  time.Time
	reqCtx context.Context // parent of per-request contexts: never cancelled by stopping
	cancel context.CancelFunc
	runCtx context.Context
	issued atomic.Int64 // request slots taken, bounded by MaxRequests
	reqs   atomic.Int64
	fails  atomic.Int64
	all    histogram
	// epoch counts BeginWindow and EndWindow calls: odd while a window is
	// open. A request whose start and completion saw the same even epoch
	// is steady; any other is in a window.
	epoch  atomic.Int64
	phases [2]phaseStats // [0] steady, [1] windows

	mu          sync.Mutex
	windowOpen  time.Time     // when the open window began
	windowTotal time.Duration // closed windows
	kinds       map[string]int64
	firstErrors []string
	versions    map[string]int64
	pids        map[string]int64

	wg    sync.WaitGroup
	done  chan struct{}
	final Result
}

// Start starts the clients and returns at once. The run ends when Duration
// has passed, MaxRequests requests were issued, ctx is cancelled or Stop is
// called, whichever comes first. Start panics if Duration <= 0.
func Start(ctx context.Context, cfg Config) *Run {
	if cfg.Duration <= 0 {
		panic("loadgen: Config.Duration must be > 0")
	}
	if cfg.MaxRequests <= 0 {
		cfg.MaxRequests = DefaultMaxRequests
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	r := &Run{
		cfg:      cfg,
		start:    time.Now(),
		reqCtx:   context.WithoutCancel(ctx),
		kinds:    map[string]int64{},
		phases:   [2]phaseStats{{kinds: map[string]int64{}}, {kinds: map[string]int64{}}},
		versions: map[string]int64{},
		pids:     map[string]int64{},
		done:     make(chan struct{}),
	}
	r.runCtx, r.cancel = context.WithTimeout(ctx, cfg.Duration)

	var transports []*http.Transport
	for i := 0; i < cfg.KeepAlive+cfg.NewConn; i++ {
		tr := newTransport(cfg.Timeout, i >= cfg.KeepAlive, cfg.UnixSocket)
		transports = append(transports, tr)
		client := &http.Client{
			Transport: tr,
			// A redirect would re-send the request; report 3xx as it is.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
		r.wg.Add(1)
		go r.client(client)
	}
	go func() {
		r.wg.Wait()
		r.cancel()
		for _, tr := range transports {
			tr.CloseIdleConnections()
		}
		r.final = r.Snapshot()
		close(r.done)
	}()
	return r
}

func newTransport(timeout time.Duration, newConn bool, unixSocket string) *http.Transport {
	d := &net.Dialer{Timeout: timeout}
	dial := d.DialContext
	if unixSocket != "" {
		dial = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "unix", unixSocket)
		}
	}
	tr := &http.Transport{
		Proxy:                 nil,
		DialContext:           dial,
		ForceAttemptHTTP2:     false,
		DisableCompression:    true,
		MaxIdleConns:          1,
		MaxIdleConnsPerHost:   1,
		ResponseHeaderTimeout: timeout,
	}
	if newConn {
		tr.DisableKeepAlives = true
	}
	return tr
}

// Snapshot returns the figures so far. It is safe to call concurrently with
// the run and after it ended.
func (r *Run) Snapshot() Result {
	res := Result{
		Requests: r.reqs.Load(),
		Failures: r.fails.Load(),
		Elapsed:  time.Since(r.start),
	}
	select {
	case <-r.done:
		res.Elapsed = r.final.Elapsed
	default:
	}
	res.P50, res.P99, res.P999, res.Max = r.all.percentiles()
	for i, ph := range []*Phase{&res.Steady, &res.Windows} {
		s := &r.phases[i]
		ph.Requests, ph.Failures, ph.Completed = s.reqs.Load(), s.fails.Load(), s.completed.Load()
		ph.P50, ph.P99, ph.P999, ph.Max = s.hist.percentiles()
	}
	r.mu.Lock()
	res.FailuresByKind = copyMap(r.kinds)
	res.FirstErrors = append([]string(nil), r.firstErrors...)
	res.Versions = copyMap(r.versions)
	res.PIDs = copyMap(r.pids)
	res.Steady.FailuresByKind = copyMap(r.phases[0].kinds)
	res.Windows.FailuresByKind = copyMap(r.phases[1].kinds)
	res.Windows.Duration = r.windowTotal
	if !r.windowOpen.IsZero() {
		res.Windows.Duration += time.Since(r.windowOpen)
	}
	r.mu.Unlock()
	res.Steady.Duration = res.Elapsed - res.Windows.Duration
	return res
}

// BeginWindow opens a window (see Result.Windows); it does nothing if one
// is open already.
func (r *Run) BeginWindow() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.windowOpen.IsZero() {
		r.windowOpen = time.Now()
		r.epoch.Add(1)
	}
}

// EndWindow closes the open window, if any.
func (r *Run) EndWindow() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.windowOpen.IsZero() {
		r.windowTotal += time.Since(r.windowOpen)
		r.windowOpen = time.Time{}
		r.epoch.Add(1)
	}
}

// Stop stops all clients from starting new requests, waits for the requests
// in flight (each bounded by Timeout) and returns the totals. It may be
// called more than once and together with Wait.
func (r *Run) Stop() Result {
	r.cancel()
	return r.Wait()
}

// Wait waits until Duration, MaxRequests or the context ends the run and
// returns the totals.
func (r *Run) Wait() Result {
	<-r.done
	return r.final
}

func (r *Run) client(c *http.Client) {
	defer r.wg.Done()
	for r.runCtx.Err() == nil {
		if r.issued.Add(1) > r.cfg.MaxRequests {
			r.cancel() // every client stops: the budget is spent
			return
		}
		r.one(c)
		if r.cfg.Pause > 0 {
			t := time.NewTimer(r.cfg.Pause)
			select {
			case <-t.C:
			case <-r.runCtx.Done():
				t.Stop()
				return
			}
		}
	}
}

// body is a request body that only implements Read: http.NewRequest cannot
// recognise it, so the request has no GetBody and cannot be replayed.
type body struct{ r io.Reader }

func (b *body) Read(p []byte) (int, error) { return b.r.Read(p) }

var payload = []byte("loadgen payload: this body cannot be replayed\n")

func (r *Run) one(c *http.Client) {
	ctx, cancel := context.WithTimeout(r.reqCtx, r.cfg.Timeout)
	defer cancel()
	begin := time.Now()
	epoch := r.epoch.Load()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.cfg.URL, &body{bytes.NewReader(payload)})
	if err != nil {
		r.record(begin, epoch, nil, err)
		return
	}
	req.ContentLength = int64(len(payload)) // no chunking, still no GetBody
	req.Header.Set("Content-Type", "text/plain")
	resp, err := c.Do(req)
	if err != nil {
		r.record(begin, epoch, nil, err)
		return
	}
	// Read the whole body (keeps the connection reusable), parse its start.
	head, err := io.ReadAll(io.LimitReader(resp.Body, maxBodyKept))
	if err == nil {
		_, err = io.Copy(io.Discard, resp.Body)
	}
	resp.Body.Close()
	if err != nil {
		r.record(begin, epoch, nil, fmt.Errorf("reading response body (status %d): %w", resp.StatusCode, err))
		return
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		r.record(begin, epoch, nil, &statusError{code: resp.StatusCode, body: head})
		return
	}
	r.record(begin, epoch, head, nil)
}

type statusError struct {
	code int
	body []byte
}

func (e *statusError) Error() string {
	b := strings.TrimSpace(string(e.body))
	if len(b) > 200 {
		b = b[:200] + "…"
	}
	return fmt.Sprintf("status %d: %s", e.code, b)
}

func (r *Run) record(begin time.Time, epoch int64, okBody []byte, err error) {
	lat := time.Since(begin)
	if r.cfg.Observe != nil {
		defer func() { r.cfg.Observe(sample(begin, begin.Add(lat), okBody, err)) }()
	}
	now := r.epoch.Load()
	r.all.add(lat)
	ph := &r.phases[0]
	if epoch%2 == 1 || now != epoch {
		ph = &r.phases[1]
	}
	ph.hist.add(lat)
	ph.reqs.Add(1)
	r.phases[now%2].completed.Add(1)
	if err != nil {
		kind := Classify(err)
		ph.fails.Add(1)
		r.mu.Lock()
		r.kinds[kind]++
		ph.kinds[kind]++
		if len(r.firstErrors) < maxFirstErrors {
			r.firstErrors = append(r.firstErrors, kind+": "+err.Error())
		}
		r.mu.Unlock()
		r.fails.Add(1)
		r.reqs.Add(1)
		return
	}
	version, pid := parseBody(okBody)
	r.mu.Lock()
	if version != "" {
		bump(r.versions, version)
	}
	if pid != "" {
		bump(r.pids, pid)
	}
	r.mu.Unlock()
	r.reqs.Add(1)
}

// parseBody reads an answer's version (its first word) and the value of
// its first "pid=" word.
func parseBody(body []byte) (version, pid string) {
	fields := strings.Fields(string(body))
	if len(fields) > 0 {
		version = fields[0]
	}
	for _, f := range fields {
		if v, ok := strings.CutPrefix(f, "pid="); ok {
			return version, v
		}
	}
	return version, ""
}

func sample(begin, end time.Time, body []byte, err error) Sample {
	s := Sample{Begin: begin, End: end, Err: err}
	if err == nil {
		s.Version, s.PID = parseBody(body)
	}
	return s
}

func bump(m map[string]int64, k string) {
	if _, ok := m[k]; !ok && len(m) >= maxMapKeys {
		k = overflowKey
	}
	m[k]++
}

// Classify names the kind of a request failure as used in
// Result.FailuresByKind.
func Classify(err error) string {
	var se *statusError
	switch {
	case errors.As(err, &se):
		return "status_" + strconv.Itoa(se.code)
	case errors.Is(err, syscall.ECONNRESET):
		return KindConnReset
	case errors.Is(err, syscall.ECONNREFUSED):
		return KindRefused
	case errors.Is(err, syscall.EPIPE):
		return KindBrokenPipe
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return KindTimeout
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return KindEOF
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return KindTimeout
	}
	// net/http does not always wrap what it saw; fall back on the text.
	s := err.Error()
	switch {
	case strings.Contains(s, "connection reset"):
		return KindConnReset
	case strings.Contains(s, "connection refused"):
		return KindRefused
	case strings.Contains(s, "broken pipe"):
		return KindBrokenPipe
	case strings.Contains(s, "timeout"), strings.Contains(s, "deadline exceeded"):
		return KindTimeout
	case strings.Contains(s, "EOF"), strings.Contains(s, "server closed"):
		return KindEOF
	}
	return KindOther
}

func copyMap(m map[string]int64) map[string]int64 {
	c := make(map[string]int64, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// phaseStats are the figures of one phase; kinds is guarded by Run.mu.
type phaseStats struct {
	reqs, fails, completed atomic.Int64
	hist                   histogram
	kinds                  map[string]int64
}

// histogram is a lock-free latency histogram with its maximum.
type histogram struct {
	buckets [numBuckets]atomic.Int64
	max     atomic.Int64
}

func (h *histogram) add(lat time.Duration) {
	h.buckets[bucketOf(int64(lat))].Add(1)
	for {
		m := h.max.Load()
		if int64(lat) <= m || h.max.CompareAndSwap(m, int64(lat)) {
			return
		}
	}
}

// percentiles returns p50, p99, p99.9 and the maximum.
func (h *histogram) percentiles() (p50, p99, p999, max time.Duration) {
	max = time.Duration(h.max.Load())
	var counts [numBuckets]int64
	var total int64
	for i := range counts {
		counts[i] = h.buckets[i].Load()
		total += counts[i]
	}
	return percentile(&counts, total, 0.50, max), percentile(&counts, total, 0.99, max),
		percentile(&counts, total, 0.999, max), max
}

// Latency histogram: values below 16ns get one bucket each; above, each
// power of two is split into 16 linear sub-buckets (relative error < 1/16).
const (
	subBits    = 4
	subCount   = 1 << subBits
	numBuckets = (64-subBits)*subCount + subCount
)

func bucketOf(v int64) int {
	if v < subCount {
		if v < 0 {
			v = 0
		}
		return int(v)
	}
	e := bits.Len64(uint64(v)) - 1 // >= subBits
	sub := int(uint64(v)>>(e-subBits)) & (subCount - 1)
	return (e-subBits+1)*subCount + sub
}

// bucketUpper is the largest value that falls in bucket i.
func bucketUpper(i int) int64 {
	if i < subCount {
		return int64(i)
	}
	e := i/subCount + subBits - 1
	sub := int64(i % subCount)
	lower := (subCount + sub) << (e - subBits)
	return lower + (1 << (e - subBits)) - 1
}

func percentile(counts *[numBuckets]int64, total int64, q float64, max time.Duration) time.Duration {
	if total == 0 {
		return 0
	}
	rank := int64(q*float64(total) + 0.999999) // ceil, at least 1
	if rank < 1 {
		rank = 1
	}
	var seen int64
	for i, c := range counts {
		seen += c
		if seen >= rank {
			d := time.Duration(bucketUpper(i))
			if d > max {
				d = max
			}
			return d
		}
	}
	return max
}
