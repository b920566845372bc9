package testutil

import (
	"os"
	"path/filepath"
	"testing"
)

// PlantSymlink makes, in a new temporary directory of t, a victim
// directory (mode 0755) and a symbolic link named name that points to it,
// owned by uid 65534 (nobody) when the test runs as root: what another
// user plants where a privileged program will look.
func PlantSymlink(t testing.TB, name string) (victim, link string) {
	t.Helper()
	base := t.TempDir()
	victim = filepath.Join(base, "victim")
	if err := os.Mkdir(victim, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(victim, 0o755); err != nil {
		t.Fatal(err)
	}
	link = filepath.Join(base, name)
	if err := os.Symlink(victim, link); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		if err := os.Lchown(link, 65534, 65534); err != nil {
			t.Fatal(err)
		}
	}
	return victim, link
}
