package unixsock

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"
)

// ErrNotSocket and *LiveError are what Probe finds at a path that a new
// socket cannot take.
var ErrNotSocket = errors.New("the path exists and is not a socket")

// LiveError is a socket that answers: another process listens there.
type LiveError struct {
	// Pid is the listener's, 0 if it cannot be told.
	Pid int
}

func (e *LiveError) Error() string {
	if e.Pid > 0 {
		return fmt.Sprintf("another process (pid %d) is listening there", e.Pid)
	}
	return "another process is listening there"
}

// ErrStale is a socket file that nobody listens on.
var ErrStale = errors.New("nobody listens on the socket")

// Probe tells what is at path: nil for nothing, ErrNotSocket for a file
// that is not a socket, ErrStale for a socket nobody listens on (left by
// a process that died), a *LiveError naming its listener's pid when it
// can be told for one that answers.
func Probe(path string) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return ErrNotSocket
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		defer c.Close()
		live := &LiveError{}
		if uc, ok := c.(*net.UnixConn); ok {
			live.Pid = PeerPID(uc)
		}
		return live
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return ErrStale
	}
	return nil
}

// RemoveStale removes a unix socket file that nobody listens on, left
// behind by a process that died. Anything else at path is left alone: a
// file that is not a socket is ErrNotSocket, a socket that answers a
// *LiveError naming its listener's pid when it can be told.
func RemoveStale(path string) error {
	err := Probe(path)
	if errors.Is(err, ErrStale) {
		return os.Remove(path)
	}
	return err
}
