//go:build linux && (amd64 || arm64)

package adopt

import (
	"testing"
	"time"
)

func TestProbe(t *testing.T) {
	start := time.Now()
	if err := Probe(); err != nil {
		t.Fatalf("Probe: %v", err)
	}
	t.Logf("probe took %s", time.Since(start))
}
