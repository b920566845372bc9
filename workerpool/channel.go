package workerpool

import (
	"bytes"
	"encoding/json"
	"errors"

	"github.com/handoff-dev/handoff/internal/channel"
	"go.uber.org/zap"
)

// Message is a value a worker sent on its message channel.
type Message struct {
	Slot, Pid, Generation int
	// Data is one JSON value.
	Data []byte
	// Reply sends one JSON value back to this very worker (not to its
	// slot, which may hold another worker by then).
	Reply func(data []byte) error
}

// Control is a message of handoff's own on the channel: an object with a
// "handoff" key. "ready" marks the worker ready (like READY=1), "status"
// logs Status (like STATUS=), "stopping" logs that it drains (STOPPING=1).
type Control struct {
	Handoff string `json:"handoff"`
	Status  string `json:"status,omitempty"`
}

// ErrNoChannel is returned when sending to a worker without a message
// channel.
var ErrNoChannel = errors.New("worker has no message channel")

// Send queues one JSON value for the worker; it never blocks.
func (p *osProcess) Send(data []byte) error {
	<-p.opened
	if p.ch == nil {
		return ErrNoChannel
	}
	return p.ch.SendRaw(data)
}

func (p *osProcess) openChannel(fd, slot, gen int, onMessage func(Message)) {
	nc, err := channel.FromFDConn(fd)
	if err != nil {
		p.log.Warn("worker message channel unusable", zap.Error(err))
		return
	}
	p.ch = channel.New(nc, channel.Options{
		OnMessage: func(line []byte) {
			if ctl, ok := ParseControl(line); ok {
				p.control(ctl)
				return
			}
			if onMessage == nil {
				p.log.Debug("worker message", zap.ByteString("data", line))
				return
			}
			onMessage(Message{Slot: slot, Pid: p.pid, Generation: gen, Data: line, Reply: p.Send})
		},
		OnClose: func(err error) {
			if err != nil {
				p.log.Warn("worker message channel failed", zap.Error(err))
			}
		},
	})
}

func (p *osProcess) control(c Control) {
	switch c.Handoff {
	case "ready":
		p.markReady()
	case "status":
		p.log.Info("worker status", zap.String("status", c.Status))
	case "stopping":
		p.log.Info("worker stopping")
	default:
		p.log.Warn("worker sent an unknown control message", zap.String("handoff", c.Handoff))
	}
}

// ParseControl recognises a control message: a JSON object with a string
// "handoff" key.
func ParseControl(line []byte) (Control, bool) {
	if len(line) == 0 || line[0] != '{' || !bytes.Contains(line, []byte(`"handoff"`)) {
		return Control{}, false
	}
	var c Control
	if json.Unmarshal(line, &c) != nil || c.Handoff == "" {
		return Control{}, false
	}
	return c, true
}
