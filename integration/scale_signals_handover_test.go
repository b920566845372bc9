//go:build linux

package integration

import (
	"slices"
	"syscall"
	"testing"
	"time"
)

// TestScaleSignalsDuringHandOver: a TTIN sent to the old primary while it
// hands over to a new one, under load, is not lost: the new primary does
// it and ends with 3 workers of the new generation; no request fails.
func TestScaleSignalsDuringHandOver(t *testing.T) {
	t.Parallel()
	p, load := servingUnderLoad(t, Options{Workers: 2})
	old := p.PID
	mark, _ := p.beginDeploy("slowready", true)
	p.waitNewPrimaryStep(mark, old)
	p.Signal(old, syscall.SIGTTIN)
	u := p.AwaitUpgrade(mark, 60*time.Second)
	if u.Aborted() {
		t.Fatalf("generation %d: %s\n%s", u.Gen, u.End.Raw, p.Tail(60))
	}
	successor := p.waitSuccessor(old, 30*time.Second)
	if got := p.scaleDeltas(mark, successor, 1, 30*time.Second); !slices.Equal(got, []int{1}) {
		t.Fatalf("scales the new primary did after a TTIN to the old one during the hand-over: %v, want +1\n%s", got, p.Tail(60))
	}
	p.checkScaledTo(successor, 3, u.Gen, "vslow")
	checkLoad(t, load, "vslow")
	checkInvariant(t, p.Log.Events(), 2)
	p.shutdownAll(successor)
}
