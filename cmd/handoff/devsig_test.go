package main

import (
	"os"
	"slices"
	"syscall"
	"testing"
	"time"
)

// Signals for the primary of 'handoff dev' are never dropped, even when
// it does not read them for a while (it is starting, or busy): a HUP (a
// deploy, or a build that succeeded) or a TERM that comes after a burst of
// others still reaches it, and so does every TTIN.
func TestDevSignalsNeverDropped(t *testing.T) {
	runSigs := make(chan os.Signal, 16)
	q := newSignalQueue(runSigs)
	defer q.close()
	var sent []os.Signal
	for i := 0; i < 20; i++ {
		sent = append(sent, syscall.SIGTTIN)
	}
	sent = append(sent, syscall.SIGHUP, syscall.SIGTTOU, syscall.SIGTERM)
	for _, sig := range sent {
		q.send(sig)
	}
	var got []os.Signal
	for len(got) < len(sent) {
		select {
		case sig := <-runSigs:
			got = append(got, sig)
		case <-time.After(5 * time.Second):
			t.Fatalf("the primary got %d signals of %d: %v", len(got), len(sent), got)
		}
	}
	if !slices.Equal(got, sent) {
		t.Errorf("the primary got %v, want %v", got, sent)
	}
}
