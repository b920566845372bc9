package main

import (
	"flag"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestFlagsDocumented: for every command, the flags its table declares
// and those its --help lists are the same, so that none lags behind the
// other; the docs' tables are written from the same data (TestFlagTables).
func TestFlagsDocumented(t *testing.T) {
	for _, c := range []struct {
		name  string
		flags []string // from the command's table
		least int      // flags there must be at least: the pattern still matches
	}{
		{"run", specNames(runCmd.flags), 20},
		{"dev", specNames(devCmd.flags), 5},
		{"status", specNames(statusCmd.flags), 2},
		{"reload", specNames(reloadCmd.flags), 1},
		{"rollback", specNames(rollbackCmd.flags), 1},
		{"scale", specNames(scaleCmd.flags), 1},
		{"stop", specNames(stopCmd.flags), 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, stdout, _ := runArgs(c.name, "--help")
			if code != 0 {
				t.Fatalf("%s --help: exit %d", c.name, code)
			}
			help := names(regexp.MustCompile(`(?m)^  (--[a-z-]+)`), stdout)
			if len(c.flags) < c.least || len(help) < c.least {
				t.Fatalf("%d flags in the table, %d in --help: the pattern no longer matches", len(c.flags), len(help))
			}
			same(t, c.flags, "the flags of 'handoff "+c.name+"'", help, "'handoff "+c.name+" --help'")
		})
	}
}

// update makes TestFlagTables rewrite the docs' flag tables.
var update = flag.Bool("update", false, "rewrite the flag tables of the docs from cmd/handoff's flags")

// flagTables are the docs' flag tables: each is between the lines
// "<!-- flags: KEY (...) -->" and "<!-- /flags -->" of its doc.
var flagTables = []struct {
	doc, key string
	table    func() (string, error)
}{
	{"docs/wrapping.md", "run", func() (string, error) { return flagTable(runCmd) }},
	{"docs/development.md", "dev", func() (string, error) { return flagTable(devCmd) }},
	{"docs/operations.md", "control", func() (string, error) {
		return flagTable(statusCmd, reloadCmd, rollbackCmd, scaleCmd, stopCmd)
	}},
}

// TestFlagTables: the docs' flag tables are those the flags' specs make,
// word for word; with -update it writes them there.
func TestFlagTables(t *testing.T) {
	for _, ft := range flagTables {
		t.Run(ft.key, func(t *testing.T) {
			table, err := ft.table()
			if err != nil {
				t.Fatal(err)
			}
			want := "\n" + table + "\n"
			path := "../../" + ft.doc
			doc, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			begin, end, line, err := tableSpan(string(doc), ft.key)
			if err != nil {
				t.Fatalf("%s: %v", ft.doc, err)
			}
			got := string(doc[begin:end])
			if got == want {
				return
			}
			if *update {
				out := string(doc[:begin]) + want + string(doc[end:])
				if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
					t.Fatal(err)
				}
				t.Logf("%s: wrote the flag table of %s", ft.doc, ft.key)
				return
			}
			n, g, w := firstDiff(got, want)
			t.Errorf("%s:%d: the flag table of %s is not the one cmd/handoff's flags make (go test ./cmd/handoff -run TestFlagTables -update writes it)\n doc:   %s\n flags: %s",
				ft.doc, line+n, ft.key, g, w)
		})
	}
}

// tableSpan finds the table key in doc: its text is doc[begin:end], the
// lines between its markers, and begins on line (counted from 1).
func tableSpan(doc, key string) (begin, end, line int, err error) {
	opening := regexp.MustCompile(`(?m)^<!-- flags: ` + regexp.QuoteMeta(key) + ` .*-->\n`)
	at := opening.FindAllStringIndex(doc, -1)
	if len(at) != 1 {
		return 0, 0, 0, fmt.Errorf("%d lines <!-- flags: %s (...) --> where there must be one", len(at), key)
	}
	begin = at[0][1]
	closing := strings.Index(doc[begin-1:], "\n<!-- /flags -->")
	if closing < 0 {
		return 0, 0, 0, fmt.Errorf("no line <!-- /flags --> after <!-- flags: %s -->", key)
	}
	return begin, begin + closing, strings.Count(doc[:begin], "\n") + 1, nil
}

// firstDiff is the first line, counted from 0, where got and want differ,
// and that line of each.
func firstDiff(got, want string) (n int, g, w string) {
	gl, wl := strings.Split(got, "\n"), strings.Split(want, "\n")
	line := func(ls []string, i int) string {
		if i < len(ls) {
			return ls[i]
		}
		return "(the table has ended)"
	}
	for n = 0; n < len(gl) && n < len(wl) && gl[n] == wl[n]; n++ {
	}
	return n, line(gl, n), line(wl, n)
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
			if ok, def := isDefault(s, strings.TrimSuffix(m[1], ":")); !ok {
				t.Errorf("handoff %s --help: %s says its default is %s, its table %s", c.name, s.label(), m[1], def)
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

// TestFlagDefaultsInDocs: where a flag of run or dev has a default, the
// default cell of its row in the docs says it (in code or not), read as
// the flag reads a value. (The control commands' flags have none.)
func TestFlagDefaultsInDocs(t *testing.T) {
	for _, c := range []command[runOptions]{runCmd, devCmd} {
		for _, s := range c.flags {
			if s.def == nil || reflect.ValueOf(s.def).IsZero() {
				continue // the docs say it in words
			}
			var said []string
			for _, cells := range s.docCells() {
				if cells[2] != "" {
					said = append(said, strings.Trim(cells[2], "`"))
				}
			}
			if len(said) != 1 {
				t.Errorf("handoff %s: %s has %d defaults in the docs, want 1: %q", c.name, s.label(), len(said), said)
				continue
			}
			if ok, def := isDefault(s, said[0]); !ok {
				t.Errorf("handoff %s: the docs say the default of %s is %s, its table %s", c.name, s.label(), said[0], def)
			}
		}
	}
}

// isDefault tells whether s reads v as its default; def is its default as
// the flag prints it.
func isDefault[T any](s flagSpec[T], v string) (ok bool, def string) {
	fs := flag.NewFlagSet(s.name, flag.ContinueOnError)
	s.define(fs, new(T))
	f := fs.Lookup(s.name)
	return f.Value.Set(v) == nil && f.Value.String() == f.DefValue, f.DefValue
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
