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
	// Passed to a new primary as files (see listenfd.go).
	keys := make([]string, len(p.cfg.Listeners))
	seen := map[string]int{}
	for i, l := range p.cfg.Listeners {
		keys[i] = listenerKey(l, seen[l.Network+" "+l.Address])
		seen[l.Network+" "+l.Address]++
	}
	layer := sockets.NewLayer(p.log, keys)
	for i, l := range p.cfg.Listeners {
		if l.Network == "tcp" && (mode != steer.Shared || p.upg.HasParent()) {
			g, m, slots, ok, err := p.bindGroup(l, keys[i], mode)
			if err != nil {
				return fds, nil, err
			}
			if ok {
				p.sockets = layer
				var fd int
				if m != nil {
					layer.AddGroup(i, g, m)
					fd = m.Fd()
				} else {
					fd = layer.AddImported(i, g, slots)
				}
				dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 3)
				if err != nil {
					return fds, nil, fmt.Errorf("listen %s: %v", l.Address, err)
				}
				fds = append(fds, dup)
				names = append(names, l.Name)
				addrs = append(addrs, g.Addr().String())
				continue
			}
		}
		fd, addr, err := p.bindListener(l, keys[i])
		if err != nil {
			return fds, nil, err
		}
		layer.AddShared(i, fd)
		fds = append(fds, fd)
		names = append(names, l.Name)
		addrs = append(addrs, addr)
	}
	p.addrs = addrs
	if p.sockets != nil && p.upg.HasParent() {
		p.imported = layer.Imported()
		why = "taken over from the previous primary"
	}
	switch {
	case p.sockets == nil && p.upg.HasParent():
		why = "taken over from the previous primary, which shared its sockets"
	case p.sockets == nil && mode != steer.Shared:
		why = "no TCP listener: a unix listener is one socket every worker shares"
	}
	p.balance = balanceInfo{mode: layer.Mode(), why: why}
	return fds, names, nil
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
