//go:build linux

package pin

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestShebang(t *testing.T) {
	long := "#!/bin/" + strings.Repeat("x", headMax)
	for head, want := range map[string][3]string{
		"#!/bin/sh\necho":                {"/bin/sh", "", "ok"},
		"#! /usr/bin/python3 -u \nprint": {"/usr/bin/python3", "-u", "ok"},
		"#!/usr/bin/env node\n":          {"/usr/bin/env", "node", "ok"},
		"#!/usr/bin/env -S node --a b\n": {"/usr/bin/env", "-S node --a b", "ok"},
		"#!/bin/sh\t-e\n":                {"/bin/sh", "-e", "ok"},
		"#!\n":                           {"", "", ""},
		"#!/bin/sh":                      {"/bin/sh", "", "ok"},
		long:                             {"", "", ""},
		"\x7fELF":                        {"", "", ""},
	} {
		interp, arg, ok := shebang([]byte(head))
		if got := [3]string{interp, arg, map[bool]string{true: "ok"}[ok]}; got != want {
			t.Errorf("shebang(%q) = %q, want %q", head, got, want)
		}
	}
}

// A script pins its interpreter (for env NAME, NAME found in Options.PATH)
// and runs by its own path: Exec gives the interpreter's descriptor and
// the argv the kernel would make.
func TestScriptPinsItsInterpreter(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	os.Mkdir(bin, 0o755)
	interp := filepath.Join(bin, "myinterp")
	install(t, interp, system(t, "sh"))
	app := filepath.Join(dir, "app")
	install(t, app, []byte("#!/usr/bin/env myinterp\necho \"$0 $1\"\n"))

	if _, err := Pin(app, Options{PATH: dir}); err == nil || !strings.Contains(err.Error(), "myinterp not found in PATH") {
		t.Errorf("an interpreter not in PATH: %v", err)
	}
	f := pinT(t, app, Options{PATH: "/nonexistent:" + bin})
	id, ok := f.Interpreter()
	if !ok || id.Path != interp {
		t.Fatalf("interpreter %+v, %v; want %s", id, ok, interp)
	}
	if d := f.Describe(); !strings.HasPrefix(d, "script: interpreter "+interp+" pinned (sha256 ") {
		t.Errorf("Describe: %q", d)
	}
	check := func(f *File, what string) {
		t.Helper()
		exe, argv, note, err := f.Exec([]string{"ignored", "a"})
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		defer exe.Close()
		if want := []string{"myinterp", app, "a"}; !slices.Equal(argv, want) || note != "" {
			t.Errorf("%s: argv %q, note %q; want %q", what, argv, note, want)
		}
		got, err := fstat(exe)
		var want unix.Stat_t
		if err != nil || unix.Stat(interp, &want) != nil || got.Ino != want.Ino {
			t.Errorf("%s: the descriptor to exec is not the interpreter's", what)
		}
	}
	check(f, "pinned")

	// Across a hand-over the interpreter comes along.
	s := &mapStore{}
	defer s.close()
	tok, err := f.Export(s, "k")
	if err != nil {
		t.Fatal(err)
	}
	g, err := Import(s, tok)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	check(g, "imported")
	if !g.Same(f) {
		t.Error("the imported pin is not the same build")
	}

	// A changed script is told; it is still what runs.
	install(t, app, []byte("#!/usr/bin/env myinterp\necho changed\n"))
	if note, err := f.ScriptChanged(); err != nil || !strings.Contains(note, app+" is not the one deployed") {
		t.Errorf("changed script: %q, %v", note, err)
	}
	os.Chmod(app, 0o644)
	if _, _, _, err := f.Exec(nil); err == nil || !strings.Contains(err.Error(), "not executable") {
		t.Errorf("a script no longer executable: %v", err)
	}
	os.Remove(app)
	if _, _, _, err := f.Exec(nil); err == nil || !strings.Contains(err.Error(), "is gone") {
		t.Errorf("a script gone from its path: %v", err)
	}
}

// An interpreter that is itself a script is not pinned: the script runs
// by its path as the kernel runs it.
func TestScriptInterpreterIsAScript(t *testing.T) {
	dir := t.TempDir()
	shim := filepath.Join(dir, "python3")
	install(t, shim, []byte("#!/bin/sh\nexec sh \"$@\"\n"))
	app := filepath.Join(dir, "app")
	install(t, app, []byte("#!"+shim+"\necho hi\n"))
	f := pinT(t, app, Options{})
	if _, ok := f.Interpreter(); ok {
		t.Error("a script interpreter was pinned")
	}
	exe, argv, _, err := f.Exec([]string{app, "x"})
	if err != nil || exe != nil || !slices.Equal(argv, []string{app, "x"}) {
		t.Errorf("Exec: %v, %q, %v; want the script by its path", exe, argv, err)
	}
	if d := f.Describe(); !strings.Contains(d, "is itself a script") {
		t.Errorf("Describe: %q", d)
	}
}

// Verify accepts a process that runs the pinned file, and refuses one
// that runs another.
func TestVerify(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	f := pinT(t, self, Options{CopyMax: -1})
	if err := f.Verify(os.Getpid()); err != nil {
		t.Errorf("this process runs its own pinned executable: %v", err)
	}
	other := filepath.Join(t.TempDir(), "other")
	install(t, other, system(t, "true"))
	g := pinT(t, other, Options{})
	if err := g.Verify(os.Getpid()); !errors.Is(err, ErrNotPinned) {
		t.Errorf("another file: %v, want ErrNotPinned", err)
	}
}
