package main

import (
	"flag"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestFlagsDocumented: for every command, the flags its table declares,
// those its --help lists and those of its flag table in the docs are the
// same, so that none lags behind the others.
func TestFlagsDocumented(t *testing.T) {
	for _, c := range []struct {
		name  string
		flags []string // from the command's table
		doc   string
		least int // flags there must be at least: the patterns still match
	}{
		{"run", specNames(runCmd.flags), "docs/wrapping.md", 20},
		{"dev", specNames(devCmd.flags), "docs/development.md", 5},
		{"status", specNames(statusCmd.flags), "docs/operations.md", 2},
		{"reload", specNames(reloadCmd.flags), "docs/operations.md", 1},
		{"rollback", specNames(rollbackCmd.flags), "docs/operations.md", 1},
		{"scale", specNames(scaleCmd.flags), "docs/operations.md", 1},
		{"stop", specNames(stopCmd.flags), "docs/operations.md", 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, stdout, _ := runArgs(c.name, "--help")
			if code != 0 {
				t.Fatalf("%s --help: exit %d", c.name, code)
			}
			help := names(regexp.MustCompile(`(?m)^  (--[a-z-]+)`), stdout)
			doc, err := os.ReadFile("../../" + c.doc)
			if err != nil {
				t.Fatal(err)
			}
			table := docFlags(string(doc), c.name)
			if len(c.flags) < c.least || len(help) < c.least || len(table) < c.least {
				t.Fatalf("%d flags in the table, %d in --help, %d in the docs: the patterns no longer match",
					len(c.flags), len(help), len(table))
			}
			same(t, c.flags, "the flags of 'handoff "+c.name+"'", help, "'handoff "+c.name+" --help'")
			same(t, help, "'handoff "+c.name+" --help'", table, "the flag table of "+c.doc)
		})
	}
}

// same reports the names in one of a and b but not the other.
func same(t *testing.T, a []string, aName string, b []string, bName string) {
	t.Helper()
	for _, f := range a {
		if !slices.Contains(b, f) {
			t.Errorf("%s is in %s but not in %s", f, aName, bName)
		}
	}
	for _, f := range b {
		if !slices.Contains(a, f) {
			t.Errorf("%s is in %s but not in %s", f, bName, aName)
		}
	}
}

// specNames are the flags of specs, as "--name", sorted.
func specNames[T any](specs []flagSpec[T]) []string {
	var out []string
	for _, s := range specs {
		out = append(out, "--"+s.name)
	}
	slices.Sort(out)
	return out
}

// docFlags are the flags that the first cells of doc's flag tables name
// (rows that begin "| `--"), for the command cmd: where a table has a
// "commands" column, only its rows that name cmd there.
func docFlags(doc, cmd string) []string {
	var cells []string
	perCommand := false
	lines := strings.Split(doc, "\n")
	for i, line := range lines {
		row := strings.Split(line, " | ")
		if i+1 < len(lines) && strings.HasPrefix(lines[i+1], "| ---") && len(row) > 1 {
			perCommand = row[1] == "commands" // a table's head
		}
		if !strings.HasPrefix(line, "| `--") || (perCommand && !strings.Contains(row[1], "`"+cmd+"`")) {
			continue
		}
		cells = append(cells, row[0])
	}
	return names(regexp.MustCompile("`(--[a-z-]+)"), strings.Join(cells, "\n"))
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

// TestFlagDefaultsInHelp: where --help says "(default X)" of a flag, X is
// the default its table gives it, read as the flag reads a value.
func TestFlagDefaultsInHelp(t *testing.T) {
	said := regexp.MustCompile(`\(default:? ([^;,)\s]+)`)
	for _, c := range []command[runOptions]{runCmd, devCmd} {
		_, help, _ := runArgs(c.name, "--help")
		for _, s := range c.flags {
			if s.def == nil || reflect.ValueOf(s.def).IsZero() {
				continue // help says it in words
			}
			m := said.FindStringSubmatch(flagHelp(help, s.label()))
			if m == nil {
				t.Errorf("handoff %s --help: %s does not say its default", c.name, s.label())
				continue
			}
			fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
			s.define(fs, &runOptions{})
			f := fs.Lookup(s.name)
			if err := f.Value.Set(strings.TrimSuffix(m[1], ":")); err != nil || f.Value.String() != f.DefValue {
				t.Errorf("handoff %s --help: %s says its default is %s, its table %s", c.name, s.label(), m[1], f.DefValue)
			}
		}
	}
	_, help, _ := runArgs("dev", "--help")
	for _, g := range append(slices.Clone(goIncludes), defaultExcludes...) {
		if !regexp.MustCompile(`[ (]` + regexp.QuoteMeta(g) + `[ ),\n]`).MatchString(help) {
			t.Errorf("handoff dev --help does not name the default %s", g)
		}
	}
}

// flagHelp is the text beside and under label in help, on one line.
func flagHelp(help, label string) string {
	var text []string
	in := false
	for _, line := range strings.Split(help, "\n") {
		switch {
		case strings.HasPrefix(line, "  "+label+" "):
			in = true
			text = append(text, strings.TrimPrefix(line, "  "+label))
		case in && strings.HasPrefix(line, "   "):
			text = append(text, line)
		default:
			in = false
		}
	}
	return strings.Join(strings.Fields(strings.Join(text, " ")), " ")
}

// TestWriteFlags: each flag's help starts at the column, its further lines
// under it; a flag that reaches the column has its help two spaces after
// it, aligned with that of the flags next to it that reach it too.
func TestWriteFlags(t *testing.T) {
	type o struct{}
	spec := func(name, arg, help string) flagSpec[o] { return flagSpec[o]{name: name, arg: arg, help: help} }
	var b strings.Builder
	writeFlags(&b, []flagSpec[o]{
		spec("a", "N", "one\ntwo\n  three"),
		spec("longer", "DURATION", "four"),
		spec("b", "", "five"),
		spec("long-ish", "VALUE", "six\nseven"),
		spec("long-ish-er", "VALUE", "eight"),
		spec("c", "X", "nine"),
	}, 12)
	want := `  --a N       one
              two
                three
  --longer DURATION  four
  --b         five
  --long-ish VALUE     six
              seven
  --long-ish-er VALUE  eight
  --c X       nine
`
	if b.String() != want {
		t.Errorf("writeFlags:\n%s\nwant:\n%s", b.String(), want)
	}
}

// TestFlagTableMarkdown: a row per flag, or per value with docRows, its
// first cell from arg or docArgs; docJoin goes on with the row before;
// bars are escaped; a flag of several commands is one row that names
// them, and must be documented alike in each.
func TestFlagTableMarkdown(t *testing.T) {
	type o struct{}
	a := flagSpec[o]{name: "a", arg: "N", doc: "one", docDefault: "`1`"}
	b := flagSpec[o]{name: "b", arg: "D", doc: "two", docDefault: "`2s`", docJoin: true}
	c := flagSpec[o]{name: "c", docArgs: []string{"x|y"}, docDefault: "`x`"}
	d := flagSpec[o]{name: "d", arg: "MODE", docRows: []flagDoc{
		{args: []string{"p"}, doc: "p mode"},
		{args: []string{"q:N", "r:N"}, doc: "q or r", def: "`q:1`"},
	}}
	got, err := flagTable(command[o]{name: "one", flags: []flagSpec[o]{a, b, c, d}})
	want := "| flag | meaning | default |\n" +
		"| --- | --- | --- |\n" +
		"| `--a N`, `--b D` | one, two | `1`, `2s` |\n" +
		"| `--c x\\|y` | | `x` |\n" +
		"| `--d p` | p mode | |\n" +
		"| `--d q:N`, `--d r:N` | q or r | `q:1` |\n"
	if err != nil || got != want {
		t.Errorf("flagTable: %v\n%s\nwant:\n%s", err, got, want)
	}

	got, err = flagTable(command[o]{name: "one", flags: []flagSpec[o]{a, c}}, command[o]{name: "two", flags: []flagSpec[o]{c}})
	want = "| flag | commands | meaning | default |\n" +
		"| --- | --- | --- | --- |\n" +
		"| `--a N` | `one` | one | `1` |\n" +
		"| `--c x\\|y` | `one`, `two` | | `x` |\n"
	if err != nil || got != want {
		t.Errorf("flagTable of two commands: %v\n%s\nwant:\n%s", err, got, want)
	}

	other := a
	other.doc = "uno"
	for i, bad := range [][]command[o]{
		{{name: "one", flags: []flagSpec[o]{a}}, {name: "two", flags: []flagSpec[o]{other}}},
		{{name: "one", flags: []flagSpec[o]{{name: "e"}}}},
		{{name: "one", flags: []flagSpec[o]{b}}},
		{{name: "one", flags: []flagSpec[o]{{name: "f", doc: "two\nlines"}}}},
	} {
		if got, err := flagTable(bad...); err == nil {
			t.Errorf("flagTable of bad table %d: no error, table\n%s", i, got)
		}
	}
}
