// Package channel is the message channel between a primary and one worker:
// a unix stream socket carrying one JSON value per line, both ways.
//
// That is also the wire format of Node.js's built-in IPC channel (the fd
// named in NODE_CHANNEL_FD, serialization "json"): a Node worker uses
// process.send and process.on('message') on it unchanged.
//
// Sending never blocks: a value is queued (up to a bound) and written by a
// goroutine of its own, in order. A full queue, which means the other side
// has stopped reading, is an error for the sender, not a stall. Received
// values are handed to one callback, one at a time, in order.
package channel

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
)

// DefaultQueue is the number of values a Conn queues for sending when
// Options.Queue is 0.
const DefaultQueue = 1024

// MaxLine bounds one received line; a longer one ends the channel.
const MaxLine = 16 << 20

// Errors returned by Send.
var (
	ErrClosed    = errors.New("message channel closed")
	ErrQueueFull = errors.New("message channel queue full: the other side is not reading")
)

// Conn is one end of a channel.
type Conn struct {
	c       io.ReadWriteCloser
	out     chan []byte
	mu      sync.Mutex // guards closed and sends on out
	closed  bool
	stop    chan struct{}
	done    chan struct{} // closed once reader and writer have ended
	onClose func(error)
}

// Options tune a Conn.
type Options struct {
	// Queue bounds the values waiting to be written; 0 means DefaultQueue.
	Queue int
	// OnMessage receives each line (one JSON value, without the newline),
	// serially. The slice is the callback's to keep.
	OnMessage func(line []byte)
	// OnClose, if set, is called once when the channel ends, with the read
	// error that ended it (nil for an orderly end or Close).
	OnClose func(err error)
}

// New starts a Conn on c, which it owns from now on.
func New(c io.ReadWriteCloser, o Options) *Conn {
	if o.Queue <= 0 {
		o.Queue = DefaultQueue
	}
	cn := &Conn{c: c, out: make(chan []byte, o.Queue), stop: make(chan struct{}), done: make(chan struct{}), onClose: o.OnClose}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); cn.read(o.OnMessage) }()
	go func() { defer wg.Done(); cn.write() }()
	go func() { wg.Wait(); close(cn.done) }()
	return cn
}

// FromFD starts a Conn on an inherited socket fd (a worker's end).
func FromFD(fd int, o Options) (*Conn, error) {
	nc, err := FromFDConn(fd)
	if err != nil {
		return nil, err
	}
	return New(nc, o), nil
}

// FromFDConn wraps a socket fd in a net.Conn, which owns a duplicate of it;
// fd itself is closed.
func FromFDConn(fd int) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), "handoff-channel")
	if f == nil {
		return nil, fmt.Errorf("message channel fd %d: not open", fd)
	}
	nc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("message channel fd %d: %v", fd, err)
	}
	return nc, nil
}

// Send queues v, encoded as JSON, for sending. It never blocks.
func (c *Conn) Send(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("message: %w", err)
	}
	return c.SendRaw(b)
}

// SendRaw queues one JSON value, which must hold no newline.
func (c *Conn) SendRaw(b []byte) error {
	line := make([]byte, len(b)+1)
	copy(line, b)
	line[len(b)] = '\n'
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	select {
	case c.out <- line:
		return nil
	default:
		return ErrQueueFull
	}
}

// Close ends the channel: what is still queued is dropped. It does not
// wait; Done is closed once the reader (and with it OnMessage) and the
// writer have returned.
func (c *Conn) Close() { c.shut() }

// Done is closed once the channel has ended.
func (c *Conn) Done() <-chan struct{} { return c.done }

func (c *Conn) shut() {
	c.mu.Lock()
	if !c.closed {
		c.closed = true
		close(c.stop)
		c.c.Close()
	}
	c.mu.Unlock()
}

func (c *Conn) read(on func([]byte)) {
	br := bufio.NewReaderSize(c.c, 64<<10)
	var err error
	var long []byte
	for {
		var frag []byte
		frag, err = br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			long = append(long, frag...)
			if len(long) > MaxLine {
				err = fmt.Errorf("message longer than %d bytes", MaxLine)
				break
			}
			continue
		}
		if err != nil {
			break
		}
		// A copy: append to nil allocates, and long is ours.
		line := append(long, frag[:len(frag)-1]...)
		long = nil
		if len(line) > 0 && line[len(line)-1] == '\r' {
			line = line[:len(line)-1]
		}
		if len(line) == 0 || on == nil {
			continue
		}
		on(line)
	}
	c.mu.Lock()
	closedByUs := c.closed
	c.mu.Unlock()
	if errors.Is(err, io.EOF) || closedByUs {
		err = nil
	}
	c.shut()
	if c.onClose != nil {
		c.onClose(err)
	}
}

func (c *Conn) write() {
	for {
		select {
		case <-c.stop:
			return
		case line := <-c.out:
			if _, err := c.c.Write(line); err != nil {
				c.shut()
				return
			}
		}
	}
}
