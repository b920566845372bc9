package runtime

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"syscall"
)

// ParseListen reads a --listen value: [NAME=]HOST:PORT or [NAME=]unix:PATH.
// i is the listener's position, used for the default name.
func ParseListen(s string, i int) (Listener, error) {
	name, addr := "", s
	// A name has no ':', an address always has one before any '=' (so a
	// unix:PATH may contain '=').
	if k, v, ok := strings.Cut(s, "="); ok && !strings.Contains(k, ":") {
		name, addr = k, v
		if name == "" || len(name) > 255 || strings.ContainsAny(name, " \t\n") {
			return Listener{}, fmt.Errorf("--listen %q: the name before '=' must be 1-255 characters without spaces", s)
		}
	}
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		if path == "" {
			return Listener{}, fmt.Errorf("--listen %q: unix: needs a socket path, e.g. unix:/run/app.sock", s)
		}
		if len(path) > 107 {
			return Listener{}, fmt.Errorf("--listen %q: a unix socket path may have at most 107 bytes", s)
		}
		return Listener{Name: defaultName(name, i), Network: "unix", Address: path}, nil
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return Listener{}, fmt.Errorf("--listen %q: not HOST:PORT or unix:PATH (e.g. 127.0.0.1:8080, :8080, [::1]:8080, unix:/run/app.sock)", s)
	}
	if err := checkHostPort(addr); err != nil {
		return Listener{}, fmt.Errorf("--listen %q: %v", s, err)
	}
	return Listener{Name: defaultName(name, i), Network: "tcp", Address: addr}, nil
}

// checkHostPort checks a TCP HOST:PORT: a port from 0 to 65535 and a host
// that is an IP address, empty (every address) or a name that resolves.
func checkHostPort(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("not HOST:PORT (e.g. 127.0.0.1:9100, :9100, [::1]:9100)")
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || (n == 0 && port != "0") {
		return fmt.Errorf("port %q is not a number from 0 to 65535", port)
	}
	if host != "" && net.ParseIP(host) == nil && host != "localhost" {
		if _, err := net.LookupHost(host); err != nil {
			return fmt.Errorf("unknown host %q", host)
		}
	}
	return nil
}

// defaultName is what LISTEN_FDNAMES holds for a listener given no name,
// as systemd names sockets after their unit when FileDescriptorName= is
// not set.
func defaultName(name string, i int) string {
	if name != "" {
		return name
	}
	return "listener" + strconv.Itoa(i)
}

func unwrapAll(err error) error {
	for {
		u := errors.Unwrap(err)
		if u == nil {
			return err
		}
		err = u
	}
}

// listenError rewrites a bind failure as one line that says what to do.
func listenError(l Listener, err error) error {
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return fmt.Errorf("listen %s: address already in use: stop what holds it or pick another --listen address", l.Address)
	case errors.Is(err, syscall.EACCES):
		return fmt.Errorf("listen %s: permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE; unix sockets a writable directory)", l.Address)
	case errors.Is(err, syscall.EADDRNOTAVAIL):
		return fmt.Errorf("listen %s: no such address on this machine", l.Address)
	case errors.Is(err, syscall.ENOENT):
		return fmt.Errorf("listen unix:%s: the directory does not exist", l.Address)
	}
	return fmt.Errorf("listen %s: %v", l.Address, unwrapAll(err))
}

// Listener is one socket the primary binds and hands to every worker.
type Listener struct {
	// Name goes into LISTEN_FDNAMES; empty means "listener0",
	// "listener1", ... by position.
	Name string
	// Network is "tcp" (the default) or "unix".
	Network string
	// Address is HOST:PORT for tcp and a file system path for unix.
	Address string
}
