package runtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"sync"

	"go.uber.org/zap"

	"github.com/handoff-dev/handoff/workerpool"
)

// Hub is the primary's side of the message channels to its workers, as
// Node's worker.send and cluster.on('message'): send to one worker, to
// all, and receive what workers send. Values are encoded as JSON, one per
// line; Send never blocks serving (each worker has a bounded queue and a
// writer of its own; a full queue is an error). Messages to and from one
// worker keep their order, and the handler is called serially per worker.
//
// Nothing survives an upgrade of the primary: the new primary has its own
// Hub and its own workers; a message sent to the old primary's workers
// while they drain reaches them, nothing is forwarded or replayed.
//
// An object with a "handoff" key is handoff's own control message
// ({"handoff":"ready"} marks the worker ready, "status" and "stopping" are
// logged) and never reaches the handler; Node.js treats an object whose
// "cmd" starts with "NODE_" as internal. Do not send such values.
type Hub struct {
	onMessage func(Message)
	mu        sync.Mutex
	pool      *workerpool.Pool
	// log is the primary's; it logs a panic of onMessage or app.
	log *zap.Logger
	// local is the one worker of a standalone program.
	local func([]byte) error
	// app is App.Primary, run by a primary through this hub (startApp)
	// with a context from appCtx.
	app       func(context.Context, *Hub)
	appCtx    context.Context
	appCancel context.CancelFunc
	appDone   chan struct{}
}

// NewHub returns a hub whose messages from workers go to onMessage (nil
// drops them). Pass it as Config.Hub.
func NewHub(onMessage func(Message)) *Hub { return &Hub{onMessage: onMessage} }

// Message is one value a worker sent to the primary.
type Message struct {
	// Slot, Pid and Generation identify the worker.
	Slot, Pid, Generation int
	// Data is the JSON value it sent.
	Data  json.RawMessage
	reply func([]byte) error
}

// Decode unmarshals the message into v.
func (m Message) Decode(v any) error { return json.Unmarshal(m.Data, v) }

// Reply sends v to the worker that sent m (even if it is draining by
// now and its slot has a new worker).
func (m Message) Reply(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("message: %w", err)
	}
	return m.reply(b)
}

// ErrNoPool is returned by a Hub that no running primary uses yet.
var ErrNoPool = errors.New("no workers yet: the primary is not running")

func (h *Hub) getPool() (*workerpool.Pool, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.pool == nil {
		return nil, ErrNoPool
	}
	return h.pool, nil
}

// Send queues v for the worker that serves slot now (0..Workers-1). It
// fails when the slot has no ready worker of this primary (restarting, or
// not taken over yet) or its queue is full.
func (h *Hub) Send(slot int, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("message: %w", err)
	}
	if h.local != nil {
		if slot != 0 {
			return workerpool.ErrNoWorker
		}
		return h.local(b)
	}
	p, err := h.getPool()
	if err != nil {
		return err
	}
	return p.Send(slot, b)
}

// Broadcast queues v for every worker of this primary that is not
// draining (new ones not ready yet included). It returns how many it
// reached, and the errors of the others.
func (h *Hub) Broadcast(v any) (int, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return 0, fmt.Errorf("message: %w", err)
	}
	if h.local != nil {
		if err := h.local(b); err != nil {
			return 0, err
		}
		return 1, nil
	}
	p, err := h.getPool()
	if err != nil {
		return 0, err
	}
	return p.Broadcast(b)
}

func (h *Hub) deliver(m workerpool.Message) {
	if h.onMessage == nil {
		return
	}
	h.mu.Lock()
	log := h.log
	h.mu.Unlock()
	// A panic drops the message; the next ones are delivered.
	protect(log, "OnMessage", func() {
		h.onMessage(Message{Slot: m.Slot, Pid: m.Pid, Generation: m.Generation, Data: m.Data, reply: m.Reply})
	}, zap.Int("slot", m.Slot), zap.Int("pid", m.Pid), zap.Int("generation", m.Generation))
}

// protect runs fn, a callback of the program's own code in the primary
// (App.Primary, App.OnMessage). A panic there would end the primary and,
// through the parent-death signal, every worker: it is recovered, logged
// as "callback panicked" with its stack, and returned as the callback's
// error.
func protect(log *zap.Logger, callback string, fn func(), fields ...zap.Field) (err error) {
	defer func() {
		v := recover()
		if v == nil {
			return
		}
		err = fmt.Errorf("%s panicked: %v", callback, v)
		if log == nil {
			log = zap.NewNop()
		}
		log.Error("callback panicked", append(fields, zap.String("callback", callback),
			zap.String("panic", fmt.Sprint(v)), zap.String("stack", string(debug.Stack())))...)
	}()
	fn()
	return nil
}

// fileStore is where a primary finds the files its predecessor passed on
// and leaves its own for its successor: tableflip's Fds.
type fileStore interface {
	File(name string) (*os.File, error)
	AddFile(name string, f *os.File) error
}
