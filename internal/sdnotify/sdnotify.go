// Package sdnotify is the receiving end of the sd_notify protocol: a private
// unix datagram socket per worker, and a parser for the newline-separated
// VAR=VALUE datagrams sent to it (man sd_notify).
package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
)

// MaxDatagram is how much of one datagram is read, as systemd does.
const MaxDatagram = 4096

// Message is one parsed datagram.
type Message struct {
	Ready     bool   // READY=1
	Reloading bool   // RELOADING=1
	Stopping  bool   // STOPPING=1
	Watchdog  bool   // WATCHDOG=1
	Status    string // STATUS=…
	// Fields holds every VAR=VALUE pair of the datagram, including the
	// ones above and unknown ones (which the protocol says to ignore).
	Fields map[string]string
}

// Parse reads one datagram. Lines without '=' are skipped; a later
// assignment of the same variable wins.
func Parse(b []byte) Message {
	m := Message{Fields: map[string]string{}}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, "=")
		if !ok || k == "" {
			continue
		}
		m.Fields[k] = v
	}
	m.Ready = m.Fields["READY"] == "1"
	m.Reloading = m.Fields["RELOADING"] == "1"
	m.Stopping = m.Fields["STOPPING"] == "1"
	m.Watchdog = m.Fields["WATCHDOG"] == "1"
	m.Status = m.Fields["STATUS"]
	return m
}

// Socket is a unix datagram socket bound to a path, to be named in a
// worker's NOTIFY_SOCKET.
type Socket struct {
	conn *net.UnixConn
	path string
}

// Listen binds a datagram socket at path (removing a stale socket there
// first) and makes it writable by its owner only: put it in a directory
// of mode 0700 so that only the worker's user can reach it.
func Listen(path string) (*Socket, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("notify socket %s: exists and is not a socket", path)
		}
		_ = os.Remove(path)
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("notify socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		conn.Close()
		return nil, fmt.Errorf("notify socket: %w", err)
	}
	return &Socket{conn: conn, path: path}, nil
}

// Path is what goes into NOTIFY_SOCKET.
func (s *Socket) Path() string { return s.path }

// Read blocks for the next datagram. It returns net.ErrClosed once the
// socket has been closed.
func (s *Socket) Read() (Message, error) {
	buf := make([]byte, MaxDatagram)
	// Ancillary data (fds sent with BARRIER=1) must be received and closed,
	// never leaked into the primary.
	oob := make([]byte, 1024)
	n, oobn, _, _, err := s.conn.ReadMsgUnix(buf, oob)
	if err != nil {
		return Message{}, err
	}
	closeRights(oob[:oobn])
	return Parse(buf[:n]), nil
}

// Close closes the socket and removes its path.
func (s *Socket) Close() error {
	err := s.conn.Close()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	if rmErr := os.Remove(s.path); rmErr != nil && !os.IsNotExist(rmErr) && err == nil {
		err = rmErr
	}
	return err
}
