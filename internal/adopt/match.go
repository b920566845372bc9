// Package adopt gives a worker that binds its own port the primary's
// listening socket instead ("bind adoption").
//
// A server written to run alone calls bind() on its port, which the primary
// already holds: the bind fails with EADDRINUSE. On Linux the exec step
// (internal/shim) installs a small seccomp filter on the thread that execs
// the worker's command, which sends every bind() and listen() of the
// worker (and of what it starts) to the primary as a seccomp user
// notification (Linux 5.0; SECCOMP_IOCTL_NOTIF_ADDFD 5.9). The notification fd reaches the primary
// over a unix socket. The primary (Supervisor) reads the address from the
// worker's memory, and when it names one of the listeners, installs its own
// listening socket at the fd being bound (SECCOMP_IOCTL_NOTIF_ADDFD with
// SECCOMP_ADDFD_FLAG_SETFD) and answers success; the program's listen()
// then succeeds on a socket that is already listening (it is answered
// without running, so the primary's backlog stays), and it accepts from
// the queue the primary and every worker share, as a LISTEN_FDS worker
// does. Every other call continues untouched
// (SECCOMP_USER_NOTIF_FLAG_CONTINUE).
//
// This is a convenience, never a security boundary: the worker could change
// the address after it was read. Workers run with no_new_privs, which the
// filter requires.
package adopt

import (
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
)

// EnvFD names, in the exec step's environment, the fd of the unix socket
// on which it sends the notification fd to the primary. Its value is the
// fd number, followed by ",unlink" when unlink calls are to be sent to the
// primary too (see Listener). The exec step removes it.
const EnvFD = "HANDOFF_ADOPT_FD"

// Listener is one of the primary's listening sockets.
//
// A unix listener's socket file must outlive the workers that adopt it, but
// Go's net.UnixListener and Node's server.close() unlink the path they
// bound when they close it, and many servers unlink a stale path before
// binding: with a unix listener, workers' unlink() and unlinkat() calls go
// to the primary too, and one that names a listener's socket file is
// answered success without removing it.
type Listener struct {
	// Name is the listener's name (LISTEN_FDNAMES), for the logs.
	Name string
	// Shared: every worker accepts from this one socket (not a socket of
	// its own): a worker's shutdown() or connect(AF_UNSPEC) on it is
	// answered as done, without effect, since it would stop it for all.
	Shared bool
	// Network is "tcp" or "unix".
	Network string
	// Addr is what the socket is bound to: HOST:PORT for tcp as the socket
	// reports it (a port 0 shows the real port); a file system path for
	// unix (relative to the primary's working directory), or @NAME for an
	// abstract one.
	Addr string
	// FD is the primary's raw fd of the listening socket. It is installed
	// (duplicated) into a worker that binds the listener's address; it must
	// stay open as long as the Supervisor runs.
	FD int
}

// Addr is the address a bind asks for.
type Addr struct {
	Unix bool
	// IP (unmapped from ::ffff:a.b.c.d) and Port, for TCP/IP.
	IP   netip.Addr
	Port int
	// Path is the unix path (absolute once resolved against the worker's
	// working directory), or the abstract name when Abstract.
	Path     string
	Abstract bool
}

func (a Addr) String() string {
	switch {
	case a.Unix && a.Abstract:
		return "unix:@" + a.Path
	case a.Unix:
		return "unix:" + a.Path
	}
	return net.JoinHostPort(a.IP.String(), strconv.Itoa(a.Port))
}

// target is a listener as binds are matched against it.
type target struct {
	Listener
	addr Addr // IP invalid or unspecified: every address
	// ino and dev identify the socket (in sockfs): a worker's fd that is
	// this socket already was adopted. fileIno and fileDev identify a unix
	// listener's socket file.
	dev, ino         uint64
	fileDev, fileIno uint64
}

// parseTarget reads a Listener's address; cwd resolves a relative unix
// path.
func parseTarget(l Listener, cwd string) (target, bool) {
	t := target{Listener: l}
	if l.Network == "unix" {
		t.addr.Unix = true
		if name, ok := strings.CutPrefix(l.Addr, "@"); ok {
			t.addr.Path, t.addr.Abstract = name, true
			return t, true
		}
		t.addr.Path = absPath(l.Addr, cwd)
		return t, l.Addr != ""
	}
	host, port, err := net.SplitHostPort(l.Addr)
	if err != nil {
		return t, false
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil || n == 0 {
		return t, false
	}
	t.addr.Port = int(n)
	if host != "" {
		ip, err := netip.ParseAddr(host)
		if err != nil {
			return t, false
		}
		t.addr.IP = ip.Unmap().WithZone("")
	}
	return t, true
}

func absPath(p, cwd string) string {
	if !filepath.IsAbs(p) {
		p = filepath.Join(cwd, p)
	}
	return filepath.Clean(p)
}

func wildcard(ip netip.Addr) bool { return !ip.IsValid() || ip.IsUnspecified() }

// match returns the index of the target a bind of a adopts, or -1.
//
// TCP: the same port (never port 0, which asks for a new one), and the same
// host, or a wildcard on either side: a program binding :3000, [::]:3000 or
// 0.0.0.0:3000 adopts a listener on 127.0.0.1:3000, and one binding
// 127.0.0.1:3000 adopts a listener on :3000 (the operator's --listen
// decides where it listens). An exact host wins over a wildcard, then the
// first listener in order. Unix: the same path (already resolved), or the
// same abstract name.
func match(ts []target, a Addr) int {
	if a.Unix {
		for i, t := range ts {
			if t.addr.Unix && t.addr.Abstract == a.Abstract && t.addr.Path == a.Path && a.Path != "" {
				return i
			}
		}
		return -1
	}
	if a.Port == 0 {
		return -1
	}
	ip := a.IP.Unmap().WithZone("")
	best := -1
	for i, t := range ts {
		if t.addr.Unix || t.addr.Port != a.Port {
			continue
		}
		if wildcard(ip) == wildcard(t.addr.IP) && (wildcard(ip) || ip == t.addr.IP) {
			return i
		}
		if best < 0 && (wildcard(ip) || wildcard(t.addr.IP)) {
			best = i
		}
	}
	return best
}
