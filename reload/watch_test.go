package reload

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/handoff-dev/handoff/internal/testutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// elfBytes is a small real executable.
func elfBytes(t *testing.T) []byte {
	t.Helper()
	path, err := exec.LookPath("true")
	if err != nil {
		testutil.Need(t, "no 'true' executable")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// watch runs a Watcher over cfg until the test ends; its changes arrive on
// the returned channel.
func watch(t *testing.T, cfg Config) <-chan Change {
	t.Helper()
	w, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan Change, 100)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		w.Run(ctx, func(c Change) { ch <- c })
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })
	return ch
}

func expectChange(t *testing.T, ch <-chan Change, want string) Change {
	t.Helper()
	select {
	case c := <-ch:
		if want != "" && !strings.Contains(c.String(), want) {
			t.Fatalf("change %q does not name %s", c, want)
		}
		return c
	case <-time.After(10 * time.Second):
		t.Fatalf("no change reported (want one naming %q)", want)
	}
	return Change{}
}

// expectNone checks that nothing is reported for d.
func expectNone(t *testing.T, ch <-chan Change, d time.Duration) {
	t.Helper()
	select {
	case c := <-ch:
		t.Fatalf("unexpected change %q", c)
	case <-time.After(d):
	}
}

// renameIn writes b under a temporary name next to path and renames it
// over path, as a deploy does.
func renameIn(t *testing.T, path string, b []byte, perm os.FileMode) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, b, perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(tmp, perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func exeWatch(t *testing.T) (exe string, ch <-chan Change, elf []byte) {
	t.Helper()
	elf = elfBytes(t)
	exe = filepath.Join(t.TempDir(), "server")
	renameIn(t, exe, elf, 0o755)
	ch = watch(t, Config{Executables: []string{exe}})
	expectNone(t, ch, 3*DefaultQuiet)
	return exe, ch, elf
}

func TestRenameOver(t *testing.T) {
	exe, ch, elf := exeWatch(t)
	for i := 0; i < 3; i++ {
		renameIn(t, exe, elf, 0o755)
		expectChange(t, ch, exe)
		expectNone(t, ch, 4*DefaultQuiet)
	}
}

func TestRemoveAndRewrite(t *testing.T) {
	exe, ch, elf := exeWatch(t)
	if err := os.Remove(exe); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(exe, elf, 0o755); err != nil {
		t.Fatal(err)
	}
	expectChange(t, ch, exe)
	expectNone(t, ch, 4*DefaultQuiet)
}

func TestSlowPartialWriteWaitsForTheWholeFile(t *testing.T) {
	exe, ch, elf := exeWatch(t)
	if err := os.Remove(exe); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(exe, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Several pauses far longer than the debounce, each after a partial
	// write: never reported while incomplete.
	for _, part := range [][2]int{{0, 100}, {100, len(elf) / 2}, {len(elf) / 2, len(elf) - 1}} {
		if _, err := f.Write(elf[part[0]:part[1]]); err != nil {
			t.Fatal(err)
		}
		expectNone(t, ch, 8*DefaultQuiet)
	}
	if _, err := f.Write(elf[len(elf)-1:]); err != nil {
		t.Fatal(err)
	}
	expectChange(t, ch, exe)
	expectNone(t, ch, 4*DefaultQuiet)
}

func TestChmodMakesItComplete(t *testing.T) {
	exe, ch, elf := exeWatch(t)
	// Deployed without the execute bit: not startable, so not reported.
	renameIn(t, exe, elf, 0o644)
	expectNone(t, ch, 8*DefaultQuiet)
	if err := os.Chmod(exe, 0o755); err != nil {
		t.Fatal(err)
	}
	expectChange(t, ch, exe)
	// A chmod alone is a change too (some pipelines deploy that way).
	if err := os.Chmod(exe, 0o700); err != nil {
		t.Fatal(err)
	}
	expectChange(t, ch, exe)
}

func TestDeletedIsWaitedFor(t *testing.T) {
	exe, ch, elf := exeWatch(t)
	if err := os.Remove(exe); err != nil {
		t.Fatal(err)
	}
	expectNone(t, ch, 10*DefaultQuiet)
	renameIn(t, exe, elf, 0o755)
	expectChange(t, ch, exe)
	expectNone(t, ch, 4*DefaultQuiet)
}

func TestBurstIsOneChange(t *testing.T) {
	elf := elfBytes(t)
	exe := filepath.Join(t.TempDir(), "server")
	renameIn(t, exe, elf, 0o755)
	// A longer quiet period than the default, so that a descheduled test
	// goroutine on a loaded machine does not split the burst.
	quiet := 300 * time.Millisecond
	ch := watch(t, Config{Executables: []string{exe}, Quiet: quiet})
	for i := 0; i < 50; i++ {
		if i%2 == 0 {
			renameIn(t, exe, elf, 0o755)
		} else if err := os.WriteFile(exe, elf, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	expectChange(t, ch, exe)
	expectNone(t, ch, 3*quiet)
}

func TestScriptAndOtherFiles(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "app.sh")
	conf := filepath.Join(dir, "app.conf")
	renameIn(t, script, []byte("#!/bin/sh\nexec true\n"), 0o755)
	renameIn(t, conf, []byte("a=1\n"), 0o644)
	ch := watch(t, Config{Executables: []string{script}, Files: []string{conf}})
	renameIn(t, conf, []byte("a=2\n"), 0o644)
	expectChange(t, ch, conf)
	renameIn(t, script, []byte("#!/bin/sh\nexec false\n"), 0o755)
	expectChange(t, ch, script)
	// Another file in the same directory is not watched.
	renameIn(t, filepath.Join(dir, "other"), []byte("x"), 0o644)
	expectNone(t, ch, 4*DefaultQuiet)
}

func TestTreeNewSubdirectory(t *testing.T) {
	root := t.TempDir()
	for _, d := range []string{".git", "vendor/x", "pkg"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ch := watch(t, Config{Trees: []string{root}, Include: []string{"*.go", "go.mod"},
		Exclude: []string{".git", "vendor", filepath.Join(root, "bin", "server")}})

	write := func(rel, s string) {
		t.Helper()
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("main.go", "package main")
	expectChange(t, ch, "main.go")
	write("pkg/a.go", "package pkg")
	expectChange(t, ch, filepath.Join("pkg", "a.go"))

	// Ignored: excluded directories, files that do not match, the build
	// output.
	write(".git/index", "x")
	write("vendor/x/v.go", "package x")
	write("README.md", "x")
	write("bin/server", "x")
	expectNone(t, ch, 6*DefaultQuiet)

	// A directory made after the start, and one inside it, with files
	// written at once: all picked up, later writes too.
	write("new/deeper/b.go", "package deeper")
	expectChange(t, ch, filepath.Join("new", "deeper", "b.go"))
	write("new/deeper/c.go", "package deeper")
	expectChange(t, ch, filepath.Join("new", "deeper", "c.go"))
	write("go.mod", "module x")
	expectChange(t, ch, "go.mod")

	// Moving a directory with sources away is a change.
	if err := os.Rename(filepath.Join(root, "new"), filepath.Join(t.TempDir(), "moved")); err != nil {
		t.Fatal(err)
	}
	expectChange(t, ch, "new")

	// A build's temporary directories, made and removed with files that
	// do not count, are no change.
	for i := 0; i < 3; i++ {
		write("tmp/go-build1/b001/exe/a.out", "x")
		write("tmp/go-build1/b001/importcfg", "x")
		if err := os.RemoveAll(filepath.Join(root, "tmp", "go-build1")); err != nil {
			t.Fatal(err)
		}
	}
	expectNone(t, ch, 6*DefaultQuiet)
}

func TestNewRefusesBadInput(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{Executables: []string{filepath.Join(dir, "nope")}}, "nope: no such file or directory"},
		{Config{Files: []string{filepath.Join(dir, "a", "b")}}, "no such file or directory"},
		{Config{Trees: []string{filepath.Join(dir, "missing")}}, "missing: no such file or directory"},
		{Config{Trees: []string{dir}, Include: []string{"[a-"}}, `glob "[a-" does not parse`},
		{Config{Trees: []string{dir}, Exclude: []string{"\\"}}, `glob "\\" does not parse`},
	} {
		w, err := New(c.cfg)
		if err == nil {
			w.Close()
			t.Errorf("%+v: no error", c.cfg)
			continue
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: error %q, want %q", c.cfg, err, c.want)
		}
	}
	f := filepath.Join(dir, "file")
	os.WriteFile(f, nil, 0o644)
	if w, err := New(Config{Trees: []string{f}}); err == nil || !strings.Contains(err.Error(), "not a directory") {
		if w != nil {
			w.Close()
		}
		t.Errorf("a file as a tree: %v", err)
	}
}

func TestComplete(t *testing.T) {
	elf := elfBytes(t)
	dir := t.TempDir()
	old := time.Now().Add(-time.Minute)
	put := func(name string, b []byte, perm os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, perm); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, perm)
		os.Chtimes(p, old, old)
		return p
	}
	if err := Complete(put("whole", elf, 0o755), time.Second); err != nil {
		t.Errorf("a whole ELF: %v", err)
	}
	if err := Complete(put("script", []byte("#!/bin/sh\n"), 0o755), time.Second); err != nil {
		t.Errorf("a script: %v", err)
	}
	for name, c := range map[string]struct {
		b    []byte
		perm os.FileMode
		want string
	}{
		"empty":     {nil, 0o755, "too short"},
		"text":      {[]byte("hello"), 0o755, "neither an ELF"},
		"header":    {elf[:64], 0o755, "ELF"},
		"half":      {elf[:len(elf)/2], 0o755, "ELF"},
		"one short": {elf[:len(elf)-1], 0o755, "ELF"},
		"not exec":  {elf, 0o644, "not executable"},
	} {
		err := Complete(put(name, c.b, c.perm), time.Second)
		if !errors.Is(err, ErrIncomplete) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want ErrIncomplete saying %q", name, err, c.want)
		}
	}
	if err := Complete(filepath.Join(dir, "missing"), 0); !errors.Is(err, ErrIncomplete) || !strings.Contains(err.Error(), "missing") {
		t.Errorf("missing: %v", err)
	}
	// Modified a moment ago: not stable yet.
	fresh := filepath.Join(dir, "fresh")
	os.WriteFile(fresh, elf, 0o755)
	if err := Complete(fresh, time.Hour); !errors.Is(err, ErrIncomplete) || !strings.Contains(err.Error(), "modified") {
		t.Errorf("fresh: %v", err)
	}
	if err := Complete(dir, 0); !errors.Is(err, ErrIncomplete) {
		t.Errorf("a directory: %v", err)
	}
}

// A symlink to the executable (current -> releases/N/server): switching it
// is a change, the new target is watched for rewrites in place, and the
// old release deleted afterwards is none.
func TestSymlinkSwitch(t *testing.T) {
	elf := elfBytes(t)
	dir := t.TempDir()
	release := func(n string) string {
		p := filepath.Join(dir, "releases", n, "server")
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		renameIn(t, p, elf, 0o755)
		return p
	}
	link := filepath.Join(dir, "current")
	switchTo := func(target string) {
		t.Helper()
		tmp := link + ".new"
		if err := os.Symlink(target, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, link); err != nil {
			t.Fatal(err)
		}
	}
	r1 := release("1")
	switchTo(r1)
	ch := watch(t, Config{Executables: []string{link}})

	renameIn(t, r1, elf, 0o755) // the target rewritten
	expectChange(t, ch, r1)

	r2 := release("2")
	expectNone(t, ch, 4*DefaultQuiet) // another release appearing is no change
	switchTo(r2)
	expectChange(t, ch, link)

	if err := os.RemoveAll(filepath.Dir(r1)); err != nil {
		t.Fatal(err)
	}
	expectNone(t, ch, 6*DefaultQuiet)

	if err := os.WriteFile(r2, elf, 0o755); err != nil { // rewritten in place
		t.Fatal(err)
	}
	expectChange(t, ch, r2)
}
