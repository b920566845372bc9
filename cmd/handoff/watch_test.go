package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
)

func TestWatchFlags(t *testing.T) {
	cfg, _, err := parseRun([]string{"--listen", ":0", "--watch", "--", "./server"}, &bytes.Buffer{})
	if err != nil || !cfg.Watch || len(cfg.WatchPaths) != 0 {
		t.Errorf("--watch: %+v %v", cfg, err)
	}
	cfg, _, err = parseRun([]string{"--listen", ":0", "--watch-path", "a", "--watch-path", "b/c", "--", "./server"}, &bytes.Buffer{})
	if err != nil || !cfg.Watch || strings.Join(cfg.WatchPaths, " ") != "a b/c" {
		t.Errorf("--watch-path: %+v %v", cfg, err)
	}
	cfg, _, err = parseRun([]string{"--listen", ":0", "--", "./server"}, &bytes.Buffer{})
	if err != nil || cfg.Watch {
		t.Errorf("no watch by default: %+v %v", cfg, err)
	}

	code, _, stderr := runArgs("run", "--listen", ":0", "--watch-path", "", "--", "true")
	if code != exitUsage || !strings.Contains(stderr, "--watch-path needs a file or directory") {
		t.Errorf("empty --watch-path: exit %d %q", code, stderr)
	}

	var out bytes.Buffer
	parseRun([]string{"--help"}, &out)
	for _, f := range []string{"  --watch ", "  --watch-path PATH "} {
		if !strings.Contains(out.String(), f) {
			t.Errorf("help does not mention %q", f)
		}
	}
}

// A watch path that does not exist stops the start before anything runs:
// one line, exit 1.
func TestWatchPathMissing(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope")
	code, stdout, stderr := runArgs("run", "--listen", "127.0.0.1:0", "--watch-path", missing, "--", "true")
	if code != 1 || stdout != "" {
		t.Errorf("exit %d stdout %q", code, stdout)
	}
	want := "handoff: --watch-path " + missing + ": no such file or directory"
	if !strings.HasPrefix(stderr, want) || strings.Count(stderr, "\n") != 1 {
		t.Errorf("stderr %q, want one line starting %q", stderr, want)
	}
}
