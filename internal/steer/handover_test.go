//go:build linux

package steer

import (
	"fmt"
	"io"
	"os"
	"strconv"
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
		g2 := handOver(t, g)
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

// handOver is g taken over in-process by a new group (from duplicates of
// its descriptors), and released by the old one, whose copies leave the
// group as it is.
func handOver(t *testing.T, g *Group) *Group {
	t.Helper()
	files, state, err := g.Export()
	if err != nil {
		t.Fatal(err)
	}
	g2, err := Import(files, state)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g2.CloseAll() })
	if err := g.Release(); err != nil {
		t.Fatal(err)
	}
	return g2
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

// importer is the new primary of TestImportInAnotherProcess: it takes the
// group over from fds 3.. (their number in STEER_TEST_FILES), steers to
// the last member, says so, and exits when its stdin closes, without
// Release or CloseAll: its descriptors close as a process's do.
func importer(state string) {
	n, _ := strconv.Atoi(os.Getenv("STEER_TEST_FILES"))
	var files []*os.File
	for i := range n {
		files = append(files, os.NewFile(uintptr(3+i), "inherited"))
	}
	g, err := Import(files, []byte(state))
	if err == nil {
		ms := g.Members()
		err = g.SetServing(ms[len(ms)-1])
	}
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	fmt.Println("steered")
	io.Copy(io.Discard, os.Stdin)
}

// TestImportInAnotherProcess: a new primary takes the group over through
// inherited descriptors, as tableflip passes them, and steers it; its
// program stays attached after it exits, pointing at sockets still open.
func TestImportInAnotherProcess(t *testing.T) {
	eachMode(t, func(t *testing.T, mode Mode) {
		g, ms := newGroup(t, "127.0.0.1:0", mode, 3)
		if err := g.SetServing(ms[0]); err != nil {
			t.Fatal(err)
		}
		files, state, err := g.Export()
		if err != nil {
			t.Fatal(err)
		}
		cmd, stdin := startChild(t, []string{"STEER_TEST_IMPORT=" + string(state), fmt.Sprintf("STEER_TEST_FILES=%d", len(files))}, files, "steered")
		if err := g.Release(); err != nil {
			t.Fatal(err)
		}
		if hits := askAll(t, g, 20, true); hits[ms[2].ID()] != 20 {
			t.Errorf("steered by the new primary: %v", hits)
		}
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			t.Fatal(err)
		}
		if hits := askAll(t, g, 20, true); hits[ms[2].ID()] != 20 {
			t.Errorf("after the new primary exited: %v", hits)
		}
	})
}
