//go:build linux

package runtime

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/handoff-dev/handoff/internal/metrics"
	"github.com/handoff-dev/handoff/internal/probe"
	"github.com/handoff-dev/handoff/internal/sockets"
	"github.com/handoff-dev/handoff/workerpool"
)

// HTTP probes (--ready http:PATH, --health http:PATH) go to one worker and
// no other, through that worker's own socket: the prober binds its socket
// to a port of its own, has the group steer that source port to the
// worker's member (steer.Group.SetProbe), connects, and clears the rule as
// soon as the connection is made. A probe thus reaches a worker that is
// not served yet (a new one, before any traffic), and only it.

// Probe kinds: the kind label of handoff_probes_total, ProbeStatus.Kind.
const (
	probeReady  = "ready"
	probeHealth = "health"
)

// recycleHealth is the reason of a worker replaced for its health checks.
const recycleHealth = metrics.RecycleHealth

// probeOnce sends one probe of spec through t, bounded by timeout.
func probeOnce(ctx context.Context, spec probe.Spec, t sockets.Target, timeout time.Duration) probe.Result {
	begin := time.Now()
	addr, ok := t.Group.Addr().(*net.TCPAddr)
	if !ok {
		return probe.Result{At: begin, Err: "not a TCP listener"}
	}
	ip := addr.IP
	if ip.IsUnspecified() {
		ip = net.IPv6loopback
		if ip4 := addr.IP.To4(); ip4 != nil {
			ip = net.IPv4(127, 0, 0, 1)
		}
	}
	var port uint16
	d := net.Dialer{Timeout: timeout, ControlContext: func(_ context.Context, _, _ string, c syscall.RawConn) error {
		// Bound before the connect, so that the group knows the source
		// port before the SYN leaves.
		var err error
		cerr := c.Control(func(fd uintptr) {
			var sa unix.Sockaddr = &unix.SockaddrInet6{}
			if ip.To4() != nil {
				sa = &unix.SockaddrInet4{}
			}
			if err = unix.Bind(int(fd), sa); err != nil {
				err = os.NewSyscallError("bind", err)
				return
			}
			var got unix.Sockaddr
			if got, err = unix.Getsockname(int(fd)); err != nil {
				err = os.NewSyscallError("getsockname", err)
				return
			}
			switch a := got.(type) {
			case *unix.SockaddrInet4:
				port = uint16(a.Port)
			case *unix.SockaddrInet6:
				port = uint16(a.Port)
			}
		})
		if err = errors.Join(cerr, err); err != nil {
			return err
		}
		return t.Group.SetProbe(port, t.Member)
	}}
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(ip.String(), strconv.Itoa(addr.Port)))
	if port != 0 {
		t.Group.ClearProbe(port)
	}
	return probe.Do(ctx, spec, conn, err, begin, timeout)
}

// readyProbe is OSLauncher.Probe for --ready http:PATH: it probes the
// worker pid through its own socket every ReadyInterval until a 2xx.
func (p *primary) readyProbe(pid int, fds []int, done <-chan struct{}, note func(string)) bool {
	spec := *p.cfg.ReadyProbe
	t, err := p.sockets.ProbeTarget(fds)
	if err != nil {
		note(err.Error())
		return false
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-done:
			cancel()
		case <-ctx.Done():
		}
	}()
	tick := time.NewTicker(p.cfg.ReadyInterval)
	defer tick.Stop()
	for {
		r := probeOnce(ctx, spec, t, p.cfg.ProbeTimeout)
		p.probes.record(pid, probeReady, r, 0)
		p.metrics.Probed(probeReady, r.OK())
		if r.OK() {
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		note(fmt.Sprintf("last probe, GET %s: %s", spec.Path, r))
		p.log.Debug("worker not ready", zap.Int("pid", pid), zap.String("probe", spec.String()), zap.String("result", r.String()))
		select {
		case <-done:
			return false
		case <-tick.C:
		}
	}
}

// watchHealth probes every ready worker through its own socket each
// HealthInterval until ctx ends. A worker whose probe fails
// HealthThreshold times in a row is sick: on probation it fails its
// deploy (which rolls back); otherwise it is replaced through the loop,
// start-new-then-retire, as --max-memory does, so that as many workers as
// there are slots stay ready.
func (p *primary) watchHealth(ctx context.Context) {
	if p.cfg.Health == nil || p.sockets == nil {
		return
	}
	h := &healthWatch{p: p, spec: *p.cfg.Health, fails: map[int]int{}}
	defer h.wg.Wait()
	t := time.NewTicker(p.cfg.HealthInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if p.sockets.Frozen() {
			continue // handed over: the new primary steers, and probes
		}
		ws := h.probeable()
		results := h.probeAll(ctx, ws)
		if ctx.Err() != nil {
			return
		}
		for i, w := range ws {
			h.judge(ctx, w, results[i])
		}
	}
}

// healthWatch is what watchHealth keeps from one round of probes to the
// next.
type healthWatch struct {
	p     *primary
	spec  probe.Spec
	fails map[int]int // pid -> failures in a row
	// The replacements run beside the probes (the loop runs them one at
	// a time), so that one does not delay finding the next sick worker.
	replacing sync.Map // pid -> true while its replacement is asked for
	wg        sync.WaitGroup
}

// probeable returns the workers to probe this round (each slot's current,
// ready, not draining worker not being replaced already), and forgets the
// failures and last probes of the workers gone.
func (h *healthWatch) probeable() []workerpool.WorkerInfo {
	var ws []workerpool.WorkerInfo
	live := map[int]bool{}
	for _, w := range h.p.pool.Workers() {
		live[w.Pid] = true
		if _, busy := h.replacing.Load(w.Pid); !busy && w.Current && w.Ready && !w.Draining {
			ws = append(ws, w)
		}
	}
	for pid := range h.fails {
		if !live[pid] {
			delete(h.fails, pid)
		}
	}
	h.p.probes.keep(live)
	return ws
}

// probeAll probes ws at once, each through its own socket, and returns
// their results in the same order; a worker that has no socket to probe
// through gets a zero Result.
func (h *healthWatch) probeAll(ctx context.Context, ws []workerpool.WorkerInfo) []probe.Result {
	results := make([]probe.Result, len(ws))
	var probing sync.WaitGroup
	for i, w := range ws {
		s, ok := w.Socks.(*sockets.Set)
		if !ok {
			continue
		}
		target, err := h.p.sockets.ProbeTarget(s.FDs())
		if err != nil {
			continue
		}
		probing.Go(func() { results[i] = probeOnce(ctx, h.spec, target, h.p.cfg.ProbeTimeout) })
	}
	probing.Wait()
	return results
}

// judge counts w's probe result r (none if r is zero) and, once w has
// failed HealthThreshold times in a row, fails its probation or has it
// replaced.
func (h *healthWatch) judge(ctx context.Context, w workerpool.WorkerInfo, r probe.Result) {
	p := h.p
	if r.At.IsZero() {
		return
	}
	if r.OK() {
		h.fails[w.Pid] = 0
	} else {
		h.fails[w.Pid]++
	}
	p.probes.record(w.Pid, probeHealth, r, h.fails[w.Pid])
	p.metrics.Probed(probeHealth, r.OK())
	if r.OK() {
		return
	}
	log := p.log.With(zap.Int("slot", w.Slot), zap.Int("pid", w.Pid), zap.Int("generation", w.Generation))
	if h.fails[w.Pid] < p.cfg.HealthThreshold {
		log.Info("worker health check failed", zap.String("probe", h.spec.String()), zap.String("result", r.String()),
			zap.Int("failures", h.fails[w.Pid]), zap.Int("threshold", p.cfg.HealthThreshold))
		return
	}
	reason := fmt.Sprintf("GET %s: %s", h.spec.Path, r)
	log.Warn("worker unhealthy", zap.String("probe", h.spec.String()), zap.String("result", r.String()),
		zap.Int("failures", h.fails[w.Pid]))
	delete(h.fails, w.Pid)
	if p.pool.FailProbation(w.Pid, "unhealthy: "+reason) {
		return // its deploy rolls back, which replaces it
	}
	h.replace(ctx, w, log)
}

// replace has the sick worker w replaced through the loop, beside the
// probes; w is not probed again meanwhile.
func (h *healthWatch) replace(ctx context.Context, w workerpool.WorkerInfo, log *zap.Logger) {
	h.replacing.Store(w.Pid, true)
	h.wg.Go(func() {
		defer h.replacing.Delete(w.Pid)
		var rf replaceFailures
		h.p.replaceWorker(ctx, w, recycleHealth, 0, log, &rf)
	})
}
