package main

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// The flag tables of the docs (docs/wrapping.md for run,
// docs/development.md for dev, docs/operations.md for the control
// commands) come from the flags' specs, as --help does: flagTable writes
// one, and TestFlagTables holds the docs to it (-update rewrites them).

// flagDoc is a row of a flag in the docs' tables, in Markdown: args name
// the flag in the first cell (nil: its arg), doc is the meaning, def the
// default.
type flagDoc struct {
	args     []string
	doc, def string
}

// docCells are the cells of s's rows in the docs: flag, meaning, default.
func (s flagSpec[T]) docCells() [][3]string {
	rows := s.docRows
	if rows == nil {
		rows = []flagDoc{{args: s.docArgs, doc: s.doc, def: s.docDefault}}
	}
	var cells [][3]string
	for _, r := range rows {
		names := []string{"`" + s.label() + "`"}
		if r.args != nil {
			names = nil
			for _, a := range r.args {
				names = append(names, "`--"+s.name+" "+a+"`")
			}
		}
		cells = append(cells, [3]string{strings.Join(names, ", "), r.doc, r.def})
	}
	return cells
}

// flagTable is the docs' Markdown table of the flags of cmds, a row for
// each flag (or each of its docRows) in the order of --help. A flag of
// several commands is one row, documented alike in each; with more than
// one command, a column names those that take it.
func flagTable[T any](cmds ...command[T]) (string, error) {
	rows, err := tableRows(cmds)
	if err != nil {
		return "", err
	}
	return writeTable(rows, len(cmds) > 1)
}

// docRow is one row of a flag table: its flag, meaning and default cells,
// and the commands that take the flag.
type docRow struct {
	cells [3]string
	cmds  []string
}

// tableRows are the rows of the flags of cmds, in the order of --help.
func tableRows[T any](cmds []command[T]) ([]*docRow, error) {
	var rows []*docRow
	rowsOf := map[string][]*docRow{}
	cellsOf := map[string][][3]string{}
	for _, c := range cmds {
		var before []*docRow // the rows of the flag before, in c
		for _, s := range c.flags {
			cells := s.docCells()
			own, listed := rowsOf[s.name]
			switch {
			case listed:
				if !slices.Equal(cellsOf[s.name], cells) {
					return nil, fmt.Errorf("--%s of %s is documented unlike the same flag of %s", s.name, c.name, own[0].cmds[0])
				}
			case slices.ContainsFunc(cells, func(r [3]string) bool { return r[1] == "" && r[2] == "" }):
				return nil, fmt.Errorf("--%s of %s has no doc: give it doc or docDefault", s.name, c.name)
			case s.docJoin:
				if len(before) == 0 || len(cells) != 1 {
					return nil, fmt.Errorf("--%s of %s: docJoin needs one row, and a flag before it", s.name, c.name)
				}
				last := before[len(before)-1]
				for i, cell := range cells[0] {
					last.cells[i] = joinCells(last.cells[i], cell)
				}
				own = []*docRow{last}
			default:
				for _, cell := range cells {
					own = append(own, &docRow{cells: cell})
				}
				rows = append(rows, own...)
			}
			rowsOf[s.name], cellsOf[s.name] = own, cells
			for _, r := range own {
				if !slices.Contains(r.cmds, c.name) {
					r.cmds = append(r.cmds, c.name)
				}
			}
			before = own
		}
	}
	return rows, nil
}

// writeTable writes rows as Markdown, with a column of the commands that
// take each flag when there are several.
func writeTable(rows []*docRow, several bool) (string, error) {
	var b strings.Builder
	head := []string{"flag", "meaning", "default"}
	if several {
		head = slices.Insert(head, 1, "commands")
	}
	writeCells(&b, head...)
	writeCells(&b, slices.Repeat([]string{"---"}, len(head))...)
	for _, r := range rows {
		cells := r.cells[:]
		if several {
			cells = slices.Insert(cells, 1, "`"+strings.Join(r.cmds, "`, `")+"`")
		}
		if slices.ContainsFunc(cells, func(cell string) bool { return strings.Contains(cell, "\n") }) {
			return "", errors.New("a line break in the docs of " + r.cells[0] + ": a cell is one line")
		}
		writeCells(&b, cells...)
	}
	return b.String(), nil
}

// joinCells is cell a going on with b, after a comma.
func joinCells(a, b string) string {
	if a == "" || b == "" {
		return a + b
	}
	return a + ", " + b
}

// writeCells writes a row of a Markdown table, each bar in a cell escaped;
// an empty cell is one space.
func writeCells(b *strings.Builder, cells ...string) {
	b.WriteString("|")
	for _, c := range cells {
		if c != "" {
			b.WriteString(" " + strings.ReplaceAll(c, "|", `\|`))
		}
		b.WriteString(" |")
	}
	b.WriteString("\n")
}
