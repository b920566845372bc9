package runtime

import (
	"context"
	"io"
	"os"

	"github.com/handoff-dev/handoff/workerpool"
	"go.uber.org/zap"
)

// appPrimaryKey names, among tableflip's files, the read end of a pipe
// whose write end a primary holds while its App.Primary runs: the next
// primary starts its own App.Primary once that pipe reads EOF, so the two
// never run side by side.
const appPrimaryKey = "handoff-app-primary"

// startApp runs App.Primary in its own goroutine, once the previous
// primary's has returned (at once for a first primary; for a new one,
// after the hand-over: the old primary ends its App.Primary then). Its
// context ends at this primary's hand-over (handedOver) or when Run has
// returned (stopApp).
func (h *Hub) startApp(fds fileStore) {
	log := h.log
	var prev *os.File
	if fds != nil {
		f, err := fds.File(appPrimaryKey)
		if err != nil {
			log.Warn("cannot take the previous primary's App.Primary pipe: not waiting for it", zap.Error(err))
		}
		prev = f
	}
	var held *os.File // the write end, closed when App.Primary has returned
	if fds != nil {
		r, w, err := os.Pipe()
		if err == nil {
			err = fds.AddFile(appPrimaryKey, r)
			r.Close()
			if err != nil {
				w.Close()
			} else {
				held = w
			}
		}
		if err != nil {
			log.Warn("cannot pass the App.Primary pipe on: a new primary's App.Primary will not wait for this one's", zap.Error(err))
		}
	}
	ctx, cancel := context.WithCancel(h.appCtx)
	done := make(chan struct{})
	h.mu.Lock()
	h.appCancel, h.appDone = cancel, done
	h.mu.Unlock()
	go func() {
		defer close(done)
		if held != nil {
			defer held.Close()
		}
		if prev != nil {
			waitEOF(ctx, prev)
			if ctx.Err() != nil {
				return
			}
		}
		protect(log, "Primary", func() { h.app(ctx, h) })
	}()
}

// waitEOF reads f until EOF or until ctx ends, then closes it.
func waitEOF(ctx context.Context, f *os.File) {
	eof := make(chan struct{})
	go func() {
		defer close(eof)
		io.Copy(io.Discard, f)
	}()
	select {
	case <-eof:
		f.Close()
	case <-ctx.Done():
		// A pipe's read end is in the poller: Close ends the read.
		f.Close()
		<-eof
	}
}

// handedOver ends App.Primary's context: another primary owns the
// listeners now.
func (h *Hub) handedOver() {
	if h == nil {
		return
	}
	h.mu.Lock()
	cancel := h.appCancel
	h.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

// stopApp ends App.Primary's context and waits until it has returned.
func (h *Hub) stopApp() {
	h.mu.Lock()
	cancel, done := h.appCancel, h.appDone
	h.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

// attach makes h the hub of a primary's pool, once the pool exists, and
// starts App.Primary (see startApp).
func (h *Hub) attach(p *workerpool.Pool, log *zap.Logger, fds fileStore) {
	h.mu.Lock()
	h.pool = p
	h.log = log
	h.mu.Unlock()
	if h.app != nil {
		h.startApp(fds)
	}
}
