//go:build linux && (amd64 || arm64)

package adopt

import (
	"sync"
	"time"

	"go.uber.org/zap"
)

// limiter bounds warnings that a worker can cause at every call (a bind
// whose address cannot be read, in a loop): the first is logged, those
// that follow within every are counted, and their number is logged once
// that interval is over, with the last one's fields. A storm thus logs one
// line per interval.
type limiter struct {
	every time.Duration

	mu    sync.Mutex
	until time.Time // end of the interval of the last line logged
	held  int       // warnings held back since
	last  func(n int)
	timer *time.Timer
}

// warn logs msg at warn level with fields, or counts it.
func (l *limiter) warn(log *zap.Logger, msg string, fields ...zap.Field) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	if l.held == 0 && !now.Before(l.until) {
		l.until = now.Add(l.every)
		log.Warn(msg, fields...)
		return
	}
	l.held++
	l.last = func(n int) {
		log.Warn(msg, append(fields[:len(fields):len(fields)], zap.Int("suppressed", n), zap.Duration("interval", l.every))...)
	}
	if l.timer == nil {
		l.timer = time.AfterFunc(time.Until(l.until), l.flush)
	}
}

// flush logs the number of warnings held back, if any.
func (l *limiter) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.timer != nil {
		l.timer.Stop()
		l.timer = nil
	}
	if l.held == 0 {
		return
	}
	l.last(l.held)
	l.held, l.last = 0, nil
	l.until = time.Now().Add(l.every)
}
