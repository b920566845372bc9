package adopt

import (
	"errors"
	"strconv"
	"strings"
)

// Traps are the system calls besides bind and listen that a worker's
// filter sends to the primary.
type Traps struct {
	// Unlink: unlink and unlinkat (there is a unix listener, whose socket
	// file a worker's unlink must not remove).
	Unlink bool
	// Guard: shutdown and connect (there is a listener every worker
	// shares, which one worker's shutdown() or connect(AF_UNSPEC) must
	// not turn off for all).
	Guard bool
}

// Env is the EnvFD entry for a worker whose socket is fd n.
func Env(n int, tr Traps) string {
	v := EnvFD + "=" + strconv.Itoa(n)
	if tr.Unlink {
		v += ",unlink"
	}
	if tr.Guard {
		v += ",guard"
	}
	return v
}

// ParseEnv reads EnvFD's value: the socket's fd and which further calls
// are sent to the primary.
func ParseEnv(v string) (fd int, tr Traps, err error) {
	num, opts, _ := strings.Cut(v, ",")
	fd, err = strconv.Atoi(num)
	if err != nil || fd < 3 {
		return -1, Traps{}, errors.New("bad " + EnvFD + "=" + v)
	}
	if opts == "" {
		return fd, tr, nil
	}
	for _, o := range strings.Split(opts, ",") {
		switch o {
		case "unlink":
			tr.Unlink = true
		case "guard":
			tr.Guard = true
		default:
			return -1, Traps{}, errors.New("bad " + EnvFD + "=" + v)
		}
	}
	return fd, tr, nil
}
