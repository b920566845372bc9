package main

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestRunFlagsDocumented: the flags 'handoff run --help' lists and those
// of the flag table in docs/wrapping.md are the same, so that neither
// lags behind the other.
func TestRunFlagsDocumented(t *testing.T) {
	code, stdout, _ := runArgs("run", "--help")
	if code != 0 {
		t.Fatalf("run --help: exit %d", code)
	}
	help := names(regexp.MustCompile(`(?m)^  (--[a-z-]+)`), stdout)
	doc, err := os.ReadFile("../../docs/wrapping.md")
	if err != nil {
		t.Fatal(err)
	}
	var cells []string
	for _, line := range strings.Split(string(doc), "\n") {
		if strings.HasPrefix(line, "| `--") {
			cells = append(cells, strings.Split(line, " | ")[0])
		}
	}
	table := names(regexp.MustCompile("`(--[a-z-]+)"), strings.Join(cells, "\n"))
	if len(help) < 20 || len(table) < 20 {
		t.Fatalf("found %d flags in --help and %d in the table: the patterns no longer match", len(help), len(table))
	}
	for _, f := range help {
		if !slices.Contains(table, f) {
			t.Errorf("%s is in 'handoff run --help' but not in the flag table of docs/wrapping.md", f)
		}
	}
	for _, f := range table {
		if !slices.Contains(help, f) {
			t.Errorf("%s is in the flag table of docs/wrapping.md but not in 'handoff run --help'", f)
		}
	}
}

// names returns the first groups of re's matches in s, sorted, once each.
func names(re *regexp.Regexp, s string) []string {
	var out []string
	for _, m := range re.FindAllStringSubmatch(s, -1) {
		out = append(out, m[1])
	}
	slices.Sort(out)
	return slices.Compact(out)
}
