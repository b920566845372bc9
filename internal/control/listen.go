//go:build linux

package control

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"go.uber.org/zap"

	"github.com/handoff-dev/handoff/internal/unixsock"
)

// Fds is where a primary keeps what the new primary of a self-upgrade
// inherits, and finds what it inherited itself: tableflip's *Fds. The
// control socket is one of its listeners, and the path's lock one of its
// files.
type Fds interface {
	Listener(network, addr string) (net.Listener, error)
	ListenWithCallback(network, addr string, callback func(network, addr string) (net.Listener, error)) (net.Listener, error)
	File(name string) (*os.File, error)
	AddFile(name string, f *os.File) error
}

// Config is what Listen needs.
type Config struct {
	// Path is the socket's path; Default says it is DefaultPath's, not one
	// --control named (a default directory is made private, one named is
	// used as it is).
	Path    string
	Default bool
	// Fds holds the socket and its lock for a new primary; Inherited: this
	// primary was started by an old one, whose socket Fds may hold.
	Fds       Fds
	Inherited bool
	// Handler answers the requests; Log gets the server's events.
	Handler Handler
	Log     *zap.Logger
}

// Listen opens the control socket at cfg.Path (inherited from the
// previous primary on an upgrade), with the path's lock. It does not
// accept yet (see Serve). The error is one line that names the socket and
// says what to do.
func Listen(cfg Config) (*Server, error) {
	flag := "--control " + cfg.Path
	if cfg.Default {
		flag = "control socket " + cfg.Path
	}
	if len(cfg.Path) > maxPath {
		return nil, fmt.Errorf("%s: a unix socket path may have at most %d bytes", flag, maxPath)
	}
	if cfg.Inherited {
		if s, err := inherit(cfg, flag); s != nil || err != nil {
			return s, err
		}
	}
	if err := prepareDir(filepath.Dir(cfg.Path), cfg.Default); err != nil {
		if cfg.Default {
			return nil, fmt.Errorf("%s: %v (choose another place with --control PATH or %s)", flag, err, EnvDir)
		}
		return nil, fmt.Errorf("%s: %v", flag, err)
	}
	return listenNew(cfg, flag)
}

// inherit takes the socket the previous primary passed on, with its lock:
// nil, nil when it passed none.
func inherit(cfg Config, flag string) (*Server, error) {
	ln, err := cfg.Fds.Listener("unix", cfg.Path)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", flag, err)
	}
	if ln == nil {
		return nil, nil
	}
	// The path's lock, shared with the old primary (passed on to the next
	// one as it came).
	lock, err := cfg.Fds.File(lockKey)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("%s: %v", flag, err)
	}
	if lock == nil {
		// From a handoff that did not lock the path.
		if lock, err = lockSocket(cfg.Path); err == nil {
			cfg.Fds.AddFile(lockKey, lock)
		}
	}
	s := newServer(cfg.Path, ln, cfg.Handler, cfg.Log)
	s.lock = lock
	return s, nil
}

// listenNew claims the path (its lock, a stale socket removed) and binds
// the socket, mode 0600, as a listener a new primary inherits, with the
// lock.
func listenNew(cfg Config, flag string) (*Server, error) {
	lock, err := claim(cfg.Path)
	if err != nil {
		var live *unixsock.LiveError
		switch {
		case errors.Is(err, unixsock.ErrNotSocket):
			return nil, fmt.Errorf("%s: the path exists and is not a socket: remove it or give another --control path", flag)
		case errors.As(err, &live):
			return nil, fmt.Errorf("%s: %v (another handoff primary?): stop it, or give this one another --control path", flag, live)
		}
		return nil, fmt.Errorf("%s: %v", flag, unwrapAll(err))
	}
	ln, err := cfg.Fds.ListenWithCallback("unix", cfg.Path, func(network, addr string) (net.Listener, error) {
		ln, err := net.Listen(network, addr)
		if err != nil {
			return nil, err
		}
		// Until this chmod, the directory's mode and the credential
		// check keep others out.
		if err := os.Chmod(addr, 0o600); err != nil {
			ln.Close()
			return nil, err
		}
		return ln, nil
	})
	if err == nil {
		// For a new primary to hold it too, across the hand-over.
		err = cfg.Fds.AddFile(lockKey, lock)
	}
	if err != nil {
		release(lock, cfg.Path, true)
		return nil, fmt.Errorf("%s: %v", flag, err)
	}
	s := newServer(cfg.Path, ln, cfg.Handler, cfg.Log)
	s.lock = lock
	return s, nil
}
