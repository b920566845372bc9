//go:build linux

package steer

import (
	"fmt"
	"os"
	"testing"
)

func TestExportImport(t *testing.T) {
	eachMode(t, func(t *testing.T, mode Mode) {
		g, ms := newGroup(t, "127.0.0.1:0", mode, 4)
		if err := g.SetServing(ms[1], ms[2]); err != nil {
			t.Fatal(err)
		}
		// Reorder the kernel's group before the hand-over: member 3 moves
		// to index 0.
		if err := g.Close(ms[0]); err != nil {
			t.Fatal(err)
		}
		port := freePort(t, "127.0.0.1")
		if err := g.SetProbe(uint16(port), ms[3]); err != nil {
			t.Fatal(err)
		}
		files, state, err := g.Export()
		if err != nil {
			t.Fatal(err)
		}
		g2, err := Import(files, state)
		if err != nil {
			t.Fatal(err)
		}
		defer g2.CloseAll()
		// The old primary lets go; its copies leave the group as it is.
		if err := g.Release(); err != nil {
			t.Fatal(err)
		}
		if got, want := fmt.Sprint(ids(g2.Members()...)), fmt.Sprint(ids(ms[3], ms[1], ms[2])); got != want {
			t.Fatalf("imported order %s, want %s", got, want)
		}
		if got := fmt.Sprint(ids(g2.Serving()...)); got != fmt.Sprint(ids(ms[1], ms[2])) {
			t.Fatalf("imported serving set %s", got)
		}
		hits := askAll(t, g2, 40, true)
		if hits[ms[1].ID()] == 0 || hits[ms[2].ID()] == 0 || hits[ms[3].ID()] != 0 {
			t.Errorf("after the hand-over: %v", hits)
		}
		if id, err := ask(g2.Addr(), port); err != nil || id != ms[3].ID() {
			t.Errorf("probe after the hand-over: member %d, %v", id, err)
		}
		// The new primary steers, adds and closes as its own.
		checkOrder(t, g2)
		m := add(t, g2)
		if m.ID() != 4 {
			t.Errorf("next id after import: %d, want 4", m.ID())
		}
		if err := g2.SetServing(g2.Members()[1:]...); err != nil {
			t.Fatal(err)
		}
		if err := g2.Close(g2.Members()[0]); err != nil {
			t.Fatal(err)
		}
		if hits := askAll(t, g2, 30, true); hits[ms[3].ID()] != 0 || len(hits) != 3 {
			t.Errorf("after closing a member in the new primary: %v", hits)
		}
		checkOrder(t, g2)
	})
}

func TestImportRefusesBadInput(t *testing.T) {
	g, _ := newGroup(t, "127.0.0.1:0", Random, 2)
	files, state, err := g.Export()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Import(files[:1], state); err == nil {
		t.Error("Import of one socket for two members: no error")
	}
	if _, err := Import(files, []byte("{")); err == nil {
		t.Error("Import of a broken state: no error")
	}
	other, _ := newGroup(t, "127.0.0.1:0", Random, 1)
	ofiles, _, _ := other.Export()
	if _, err := Import([]*os.File{files[0], ofiles[0]}, state); err == nil {
		t.Error("Import of sockets of two addresses: no error")
	}
}
