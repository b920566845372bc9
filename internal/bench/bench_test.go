package bench

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSmoke runs every benchmark end to end at tiny sizes against real
// processes, so that the harness keeps working between 'make bench' runs.
// It asserts what does not depend on timing: every benchmark produced its
// table, and handoff lost no request across its deploys.
func TestSmoke(t *testing.T) {
	dir := t.TempDir()
	bins := map[string]string{
		"handoff":     "github.com/handoff-dev/handoff/cmd/handoff",
		"benchserver": "github.com/handoff-dev/handoff/internal/bench/benchserver",
		"hello":       "github.com/handoff-dev/handoff/examples/hello",
	}
	for name, pkg := range bins {
		out, err := exec.Command("go", "build", "-o", filepath.Join(dir, name), pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go build %s: %v\n%s", pkg, err, out)
		}
	}
	var progress bytes.Buffer
	cfg := Config{
		Handoff: filepath.Join(dir, "handoff"), Server: filepath.Join(dir, "benchserver"), Hello: filepath.Join(dir, "hello"), Dir: dir,
		Rounds: 1, Slice: 300 * time.Millisecond, Steady: 300 * time.Millisecond, Warmup: 50 * time.Millisecond, Clients: 4,
		Upgrades: 2, DisruptRuns: 1, Gap: 100 * time.Millisecond, Workers: []int{1, 2}, Deploys: 1,
		ReadyDelay: 100 * time.Millisecond, Balance: []int{2}, Reloads: 2, OutputLines: 2000, Starts: 2,
		ClusterRounds: 1, Progress: &progress,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rep, err := Run(ctx, cfg)
	t.Log(progress.String())
	if err != nil {
		t.Fatal(err)
	}
	var text, md bytes.Buffer
	rep.WriteText(&text, "go test")
	rep.WriteMarkdown(&md, "go test")
	t.Log(text.String())

	for _, title := range []string{"1. Steady-state", "2. Deploy disruption", "3. Upgrade duration", "4. Dev loop", "5. The primary's own cost", "6. Balance", "7. Worker output", "8. Bind adoption", "9. Balance with CPU-bound workers"} {
		if !strings.Contains(text.String(), title) || !strings.Contains(md.String(), "### "+title) {
			t.Errorf("no table %q in the report", title)
		}
	}
	_, noNode := exec.LookPath("node")
	for _, tb := range rep.Tables {
		if noNode != nil && strings.HasPrefix(tb.Title, "9. ") {
			t.Logf("no node (%v): benchmark 9 has no rows", noNode)
			continue
		}
		if len(tb.Rows) == 0 {
			t.Errorf("table %q has no rows", tb.Title)
		}
	}
	lossless := 0
	for _, v := range rep.Verdicts {
		if strings.Contains(v.Target, "handoff loses 0 requests") {
			lossless++
			if !v.Met {
				t.Errorf("handoff lost requests across deploys: %s", v.Measured)
			}
		}
	}
	if lossless != 4 {
		t.Errorf("want the zero-loss verdict for keep-alive and new connections, CLI and library mode: got %d", lossless)
	}
}

func TestReplaceResults(t *testing.T) {
	doc := "# Benchmarks\n\nmethod\n"
	once := ReplaceResults(doc, "first\n")
	if !strings.HasPrefix(once, doc) || !strings.Contains(once, "first") {
		t.Fatalf("results not appended:\n%s", once)
	}
	twice := ReplaceResults(once+"\ntrailer\n", "second")
	if strings.Contains(twice, "first") || !strings.Contains(twice, "second") || !strings.HasSuffix(twice, "\ntrailer\n") {
		t.Fatalf("results not replaced in place:\n%s", twice)
	}
}

func TestLinearFit(t *testing.T) {
	slope, icept, r2 := linearFit([]float64{1, 2, 4, 8}, []float64{3, 5, 9, 17})
	if slope != 2 || icept != 1 || r2 != 1 {
		t.Fatalf("fit of y=2x+1: slope %v intercept %v r2 %v", slope, icept, r2)
	}
	if q := quantile([]float64{4, 1, 3, 2}, 0.5); q != 2.5 {
		t.Fatalf("median of 1..4 = %v", q)
	}
}
