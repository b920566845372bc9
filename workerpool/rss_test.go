package workerpool

import (
	"os"
	"testing"
)

func TestRSSOfThisProcess(t *testing.T) {
	rss, err := RSS(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// A Go test binary is resident in at least a megabyte and far below a
	// terabyte: catches a unit mistake (pages or kB for bytes).
	if rss < 1<<20 || rss > 1<<40 {
		t.Fatalf("RSS = %d bytes", rss)
	}
	if _, err := RSS(1 << 30); err == nil {
		t.Fatal("RSS of a pid that cannot exist succeeded")
	}
}
