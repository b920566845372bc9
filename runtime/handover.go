//go:build linux

package runtime

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"

	"github.com/handoff-dev/handoff/internal/pin"
	"github.com/handoff-dev/handoff/internal/unixsock"
)

// envHandover names the unix socket on which an old primary waits for the
// new primary it started with tableflip. It is set only while an upgrade
// runs and never reaches a worker.
const envHandover = "HANDOFF_HANDOVER"

// envHandoverState holds, beside envHandover, what the state message says
// (a JSON message): a new primary that finds the old one dead before it
// could ask still knows the generation and the size to take over.
const envHandoverState = "HANDOFF_HANDOVER_STATE"

func encodeState(pid, gen, size int) string {
	b, _ := json.Marshal(message{Op: "state", Pid: pid, Generation: gen, Size: size})
	return string(b)
}

// handoverState reads envHandoverState's value; without one (an old
// primary of an earlier version), the generation is 1, the size workers
// and the pid 0 (unknown).
func handoverState(v string, workers int) message {
	m := message{Op: "state", Generation: 1, Size: workers}
	var st message
	if json.Unmarshal([]byte(v), &st) == nil && st.Op == "state" && st.Generation > 0 {
		m = st
	}
	return m
}

// The hand-over protocol, one JSON object a line over a unix stream socket:
//
//	new → old  hello{pid}              old → new  state{generation, size,
//	                                                    current, previous}
//	new → old  step{slot: i, steps: N} (step i of N begins; for status)
//	new → old  retire{slot}            old → new  retired{slot}
//	new → old  rollback                (old rolls its slots back, asking
//	                                    new: retire{slot} → retired{slot})
//	                                   old → new  rolledback
//	                                   old → new  newer (a deploy was asked
//	                                    of old: new ends its probation)
//	                                   old → new  mainpid (once new is
//	                                    ready: old told systemd MAINPID=new)
//
// size is the old primary's number of slots (scaled or not): the new one
// takes it over. current and previous are the old primary's generations,
// their pinned files handed over with tableflip's descriptors (pin.Token):
// the new primary keeps them for a rollback. The new primary fills the slots one at a time; once its worker in a slot
// is ready it asks the old primary to retire that slot's worker, so the two
// together never run fewer than N ready workers nor more than N+1 not
// draining. The new primary calls tableflip's Ready only once every slot is
// its own; the old one then waits for its draining workers and exits. The
// state is also in the new primary's environment (envHandoverState), for
// when the old primary dies before it could send it.
type message struct {
	Op         string `json:"op"`
	Slot       int    `json:"slot,omitempty"`
	Pid        int    `json:"pid,omitempty"`
	Generation int    `json:"generation,omitempty"`
	Size       int    `json:"size,omitempty"`
	Steps      int    `json:"steps,omitempty"`
	Error      string `json:"error,omitempty"`
	// Current and Previous (state only) are the old primary's
	// generations.
	Current  *generationToken `json:"current,omitempty"`
	Previous *generationToken `json:"previous,omitempty"`
}

// generationToken is a generation handed over to a new primary: its
// pinned file travels as tableflip descriptors, named in Pin.
type generationToken struct {
	Generation int       `json:"generation"`
	RollbackOf int       `json:"rollback_of,omitempty"`
	Pin        pin.Token `json:"pin"`
}

// peer is one end of a hand-over connection.
type peer struct {
	conn    net.Conn
	wmu     sync.Mutex
	enc     *json.Encoder
	replies chan message
	closed  chan struct{}
	// newer is closed once the old primary says a deploy was asked for
	// (new primary only).
	newer     chan struct{}
	newerOnce sync.Once
	// rollbacks counts roll-backs still running.
	rollbacks sync.WaitGroup
	// onRetire retires this side's worker of a slot; onRollback (old
	// primary only) rolls the handed-over slots back; onStep (old primary
	// only, may be nil) learns the new primary's progress.
	onRetire   func(slot int) error
	onRollback func() error
	onStep     func(step, steps int)
}

func newPeer(conn net.Conn, onRetire func(int) error, onRollback func() error, onStep func(step, steps int)) *peer {
	p := &peer{conn: conn, enc: json.NewEncoder(conn), replies: make(chan message, 16),
		closed: make(chan struct{}), newer: make(chan struct{}), onRetire: onRetire, onRollback: onRollback, onStep: onStep}
	go p.read()
	return p
}

func (p *peer) send(m message) error {
	p.wmu.Lock()
	defer p.wmu.Unlock()
	return p.enc.Encode(m)
}

func (p *peer) read() {
	defer close(p.closed)
	sc := bufio.NewScanner(p.conn)
	for sc.Scan() {
		var m message
		if json.Unmarshal(sc.Bytes(), &m) != nil {
			continue
		}
		switch m.Op {
		case "retire":
			reply := message{Op: "retired", Slot: m.Slot}
			if err := p.onRetire(m.Slot); err != nil {
				reply.Error = err.Error()
			}
			p.send(reply)
		case "newer":
			p.newerOnce.Do(func() { close(p.newer) })
		case "step":
			if p.onStep != nil {
				p.onStep(m.Slot, m.Steps)
			}
		case "rollback":
			if p.onRollback == nil {
				continue
			}
			// Rolling back asks the other side to retire workers, whose
			// replies this goroutine must keep reading.
			p.rollbacks.Add(1)
			go func() {
				defer p.rollbacks.Done()
				reply := message{Op: "rolledback"}
				if err := p.onRollback(); err != nil {
					reply.Error = err.Error()
				}
				p.send(reply)
			}()
		default:
			select {
			case p.replies <- m:
			default:
			}
		}
	}
}

// await returns the next reply with op, or an error once ctx ends or the
// other side has gone.
func (p *peer) await(ctx context.Context, op string) (message, error) {
	return p.awaitReply(ctx, op, nil)
}

// awaitReply is await, for a reply that also satisfies match (if not
// nil); other replies are dropped.
func (p *peer) awaitReply(ctx context.Context, op string, match func(message) bool) (message, error) {
	for {
		select {
		case m := <-p.replies:
			if m.Op != op || (match != nil && !match(m)) {
				continue
			}
			if m.Error != "" {
				return m, errors.New(m.Error)
			}
			return m, nil
		case <-p.closed:
			return message{}, fmt.Errorf("other primary went away while waiting for %s", op)
		case <-ctx.Done():
			return message{}, context.Cause(ctx)
		}
	}
}

// retire asks the other side to retire its worker of slot and waits until
// it has (the worker is draining): a "retired" for that very slot. One for
// another slot (a late answer to an earlier ask) is not it.
func (p *peer) retire(ctx context.Context, slot int) error {
	if err := p.send(message{Op: "retire", Slot: slot}); err != nil {
		return err
	}
	_, err := p.awaitReply(ctx, "retired", func(m message) bool { return m.Slot == slot })
	return err
}

func (p *peer) close() { p.conn.Close() }

// wait returns once the reader has ended (close the peer first) and no
// roll-back runs.
func (p *peer) wait() {
	<-p.closed
	p.rollbacks.Wait()
}

// listenHandover opens the old primary's end in dir.
func listenHandover(dir string) (*net.UnixListener, error) {
	path := dir + "/handover.sock"
	os.Remove(path)
	return net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
}

// acceptHandover waits for the new primary. Only a process of this
// primary's own user may connect.
func acceptHandover(ln *net.UnixListener) (*net.UnixConn, int, error) {
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			return nil, 0, err
		}
		cred, err := unixsock.PeerCred(c)
		if err != nil || cred.Uid != uint32(os.Getuid()) {
			c.Close()
			continue
		}
		return c, int(cred.Pid), nil
	}
}
