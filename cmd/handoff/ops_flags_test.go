package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{
		"512M": 512 << 20, "512m": 512 << 20, "1G": 1 << 30, "1g": 1 << 30, "200MiB": 200 << 20, "200mib": 200 << 20,
		"200MB": 200 << 20, "1.5G": 3 << 29, "2048K": 2 << 20, "1048576": 1 << 20, "2T": 2 << 40, " 64M ": 64 << 20,
		"64 M": 64 << 20,
	} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "M", "lots", "-1G", "1e9", "0x100000", "1GG", "1Q", "1iB", "512Mi", "+5M",
		"1_000_000", "NaN", "Inf", "100", "0", "0.5M", "9999999T"} {
		if got, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) = %d, want an error", in, got)
		}
	}
}

func TestParseOpsFlags(t *testing.T) {
	cfg, _, err := parseRun([]string{"--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:9100", "--user", "nobody:nogroup",
		"--max-memory", "256M", "--watchdog", "5s", "--", "true"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Metrics != "127.0.0.1:9100" || cfg.User != "nobody:nogroup" || cfg.MaxMemory != 256<<20 || cfg.Watchdog != 5*time.Second {
		t.Fatalf("config %+v", cfg)
	}
}

func TestOpsUsageErrors(t *testing.T) {
	ok := []string{"run", "--listen", "127.0.0.1:0"}
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"bad size", []string{"--max-memory", "lots"}, `--max-memory "lots": use bytes or a number with K, M, G or T`},
		{"tiny size", []string{"--max-memory", "100"}, `--max-memory "100": below 1MiB`},
		{"empty size", []string{"--max-memory", ""}, `--max-memory "": use bytes`},
		{"bad watchdog", []string{"--watchdog", "soon"}, `--watchdog "soon": not a valid value`},
		{"zero watchdog", []string{"--watchdog", "0s"}, `--watchdog 0s: must be at least 1ms`},
		{"negative watchdog", []string{"--watchdog", "-1s"}, `--watchdog -1s: must be at least 1ms`},
		{"metrics not an address", []string{"--metrics", "9100"}, `--metrics "9100": not HOST:PORT`},
		{"metrics bad port", []string{"--metrics", "127.0.0.1:99999"}, `--metrics "127.0.0.1:99999": port "99999"`},
		{"metrics on a listener", []string{"--listen", "127.0.0.1:8080", "--metrics", "127.0.0.1:8080"}, "--metrics 127.0.0.1:8080 is also a --listen address"},
		{"user empty", []string{"--user", ""}, `--user "": give USER or USER:GROUP`},
		{"user empty group", []string{"--user", "nobody:"}, `--user "nobody:": give USER or USER:GROUP`},
		{"user no name", []string{"--user", ":nogroup"}, `--user ":nogroup": give USER or USER:GROUP`},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := append(append(append([]string(nil), ok...), c.args...), "--", "true")
			code, stdout, stderr := runArgs(args...)
			if code != exitUsage || stdout != "" {
				t.Errorf("exit %d stdout %q, want %d and nothing", code, stdout, exitUsage)
			}
			if !strings.HasPrefix(stderr, "handoff: ") || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, c.want) {
				t.Errorf("stderr %q: want one 'handoff: ' line saying %q", stderr, c.want)
			}
		})
	}
}

func TestHelpMentionsOpsFlags(t *testing.T) {
	_, stdout, _ := runArgs("run", "--help")
	for _, flag := range []string{"--metrics", "--user", "--max-memory", "--watchdog"} {
		if !strings.Contains(stdout, "  "+flag+" ") {
			t.Errorf("help does not mention %s", flag)
		}
	}
}
