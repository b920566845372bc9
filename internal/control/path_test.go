//go:build linux

package control

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/handoff-dev/handoff/internal/testutil"
)

func TestDefaultPath(t *testing.T) {
	t.Setenv(EnvDir, "/run/x")
	if got := DefaultPath("tcp", "127.0.0.1:8080"); got != "/run/x/tcp-127.0.0.1:8080.sock" {
		t.Errorf("tcp: %s", got)
	}
	a := DefaultPath("unix", "/srv/a/app.sock")
	b := DefaultPath("unix", "/srv/b/app.sock")
	if a == b || !strings.HasPrefix(filepath.Base(a), "unix-app.sock-") {
		t.Errorf("unix: %s and %s", a, b)
	}
	t.Setenv(EnvDir, "/"+strings.Repeat("d", 80))
	if got := DefaultPath("tcp", "[2001:db8::1234:5678]:65535"); len(got) > maxPath {
		t.Errorf("long: %d bytes: %s", len(got), got)
	}
}

func TestPrepareDir(t *testing.T) {
	base := t.TempDir()
	// Created, with its parents, private.
	dir := filepath.Join(base, "a", "b")
	if err := prepareDir(dir, true); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("created: %v, %v", fi.Mode(), err)
	}
	// The default directory is made private again; one named by
	// --control is left as it is.
	os.Chmod(dir, 0o755)
	if err := prepareDir(dir, false); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o755 {
		t.Fatalf("--control directory changed to %v", fi.Mode())
	}
	if err := prepareDir(dir, true); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Fatalf("default directory left %v", fi.Mode())
	}
	file := filepath.Join(base, "file")
	os.WriteFile(file, nil, 0o600)
	if err := prepareDir(file, false); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("a file: %v", err)
	}
	if os.Geteuid() != 0 {
		testutil.Need(t, "giving a directory to another user needs root")
	}
	// Someone else's default directory is refused.
	if err := os.Chown(dir, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if err := prepareDir(dir, true); err == nil || !strings.Contains(err.Error(), "belongs to uid 65534") {
		t.Fatalf("another user's directory: %v", err)
	}
}

// TestPrepareDirSymlink: a symlink in place of the default
// directory (another user's, planted where the primary will look) is
// refused, and what it points to is left as it was.
func TestPrepareDirSymlink(t *testing.T) {
	victim, link := testutil.PlantSymlink(t, "handoff-0")
	base := filepath.Dir(link)
	err := prepareDir(link, true)
	if err == nil || !strings.Contains(err.Error(), "is a symbolic link") {
		t.Errorf("a symlink for the default directory: %v, want an error saying it is a symbolic link", err)
	}
	if fi, err := os.Stat(victim); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("the directory the link points to: mode %v (%v), want 0755 as it was", fi.Mode().Perm(), err)
	}
	// A symlink to a file, and a dangling one: refused too, nothing made.
	os.Remove(link)
	os.Symlink(filepath.Join(base, "nowhere"), link)
	if err := prepareDir(link, true); err == nil || !strings.Contains(err.Error(), "is a symbolic link") {
		t.Errorf("a dangling symlink: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(base, "nowhere")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a dangling symlink's target was created: %v", err)
	}
}
