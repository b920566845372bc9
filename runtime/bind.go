//go:build linux

package runtime

import (
	"fmt"
	"net"
	"syscall"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/handoff-dev/handoff/internal/sockets"
	"github.com/handoff-dev/handoff/internal/steer"
)

// listen binds (or inherits) every listener and returns raw duplicates of
// their fds for the workers, with their names. A TCP listener is a
// steered group (p.sockets) unless the balance mode is shared: its fd
// here is a duplicate of its first member's.
func (p *primary) listen() (fds []int, names []string, err error) {
	var addrs []string
	defer func() {
		if err != nil {
			for _, fd := range fds {
				syscall.Close(fd)
			}
			if p.sockets != nil {
				p.sockets.CloseAll(p.upg.HasParent())
				p.sockets = nil
			}
		}
	}()
	mode, why := steer.Shared, ""
	if !p.upg.HasParent() {
		if mode, why, err = p.balanceMode(); err != nil {
			return nil, nil, err
		}
	}
	keys := listenerKeys(p.cfg.Listeners)
	layer := sockets.NewLayer(p.log, keys)
	for i, l := range p.cfg.Listeners {
		fd, addr, steered, err := p.bindSteered(layer, i, l, keys[i], mode)
		if err != nil {
			return fds, nil, err
		}
		if !steered {
			if fd, addr, err = p.bindListener(l, keys[i]); err != nil {
				return fds, nil, err
			}
			layer.AddShared(i, fd)
		}
		fds = append(fds, fd)
		names = append(names, l.Name)
		addrs = append(addrs, addr)
	}
	p.addrs = addrs
	p.balance = balanceInfo{mode: layer.Mode(), why: p.balanceWhy(mode, why)}
	return fds, names, nil
}

// listenerKeys names each listener among the files passed to a new
// primary (see listenfd.go).
func listenerKeys(ls []Listener) []string {
	keys := make([]string, len(ls))
	seen := map[string]int{}
	for i, l := range ls {
		keys[i] = listenerKey(l, seen[l.Network+" "+l.Address])
		seen[l.Network+" "+l.Address]++
	}
	return keys
}

// bindSteered makes TCP listener i a steered group of layer in mode, or
// takes over the previous primary's, and returns a duplicate of the fd
// the first worker (or the old primary's) accepts from, with the bound
// address. steered is false for a listener that is one shared socket:
// a unix one, every one in shared mode, or one the previous primary
// passed as shared.
func (p *primary) bindSteered(layer *sockets.Layer, i int, l Listener, key string, mode steer.Mode) (dup int, addr string, steered bool, err error) {
	if l.Network != "tcp" || (mode == steer.Shared && !p.upg.HasParent()) {
		return 0, "", false, nil
	}
	g, m, slots, ok, err := p.bindGroup(l, key, mode)
	if err != nil || !ok {
		return 0, "", false, err
	}
	p.sockets = layer
	var fd int
	if m != nil {
		layer.AddGroup(i, g, m)
		fd = m.Fd()
	} else {
		fd = layer.AddImported(i, g, slots)
	}
	dup, err = unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 3)
	if err != nil {
		return 0, "", false, fmt.Errorf("listen %s: %v", l.Address, err)
	}
	return dup, g.Addr().String(), true, nil
}

// balanceWhy is why connections are spread as they are, once every
// listener is bound: why, the reason of the mode asked for, unless
// something else decided.
func (p *primary) balanceWhy(mode steer.Mode, why string) string {
	switch {
	case p.sockets != nil && p.upg.HasParent():
		return "taken over from the previous primary"
	case p.sockets == nil && p.upg.HasParent():
		return "taken over from the previous primary, which shared its sockets"
	case p.sockets == nil && mode != steer.Shared:
		return "no TCP listener: a unix listener is one socket every worker shares"
	}
	return why
}

// logListening logs the bound listeners, once the control socket is set
// up too: a failed start prints its one error line and nothing else.
func (p *primary) logListening() {
	for i, l := range p.cfg.Listeners {
		p.log.Info("listening", zap.String("name", l.Name), zap.String("network", l.Network), zap.String("addr", p.addrs[i]))
	}
}

// listenMetrics binds (or inherits) the --metrics socket through
// tableflip, so that a new primary serves it on without a gap. It is never
// passed to a worker: workers get only the raw fds of cfg.Listeners.
//
// tableflip finds an inherited socket by network and address, so the
// metrics socket gets a name of its own: a --listen of the same address
// spelling (say two :0) must not be taken for it.
func (p *primary) listenMetrics() (net.Listener, error) {
	ln, err := p.bind("tcp", "handoff-metrics "+p.cfg.Metrics, p.cfg.Metrics)
	if err != nil {
		return nil, fmt.Errorf("--metrics: %v", listenError(Listener{Network: "tcp", Address: p.cfg.Metrics}, err))
	}
	return ln, nil
}

// bind binds addr through tableflip, which knows the socket as name (and
// hands an inherited one of that network and name back instead). On a
// failure it returns the bind's own error: tableflip flattens it into
// text, and listenError turns the original into advice.
func (p *primary) bind(network, name, addr string) (net.Listener, error) {
	var bindErr error
	ln, err := p.upg.ListenWithCallback(network, name, func(network, _ string) (net.Listener, error) {
		ln, err := net.Listen(network, addr)
		bindErr = err
		return ln, err
	})
	if err != nil && bindErr != nil {
		err = bindErr
	}
	return ln, err
}
