// Package testutil holds small helpers shared by the tests of several
// packages.
package testutil

import (
	"bytes"
	"os"
	"os/exec"
	"sync"
	"testing"
)

// SyncBuffer is a bytes.Buffer safe for concurrent writers, such as a
// logger and a worker's stderr copier.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Program returns the contents of a program of the system found in PATH
// (true, false, sleep, sh), skipping the test if there is none (failing it
// under CI: see Need).
func Program(t testing.TB, name string) []byte {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		Need(t, "%s: %v", name, err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Install writes b, executable, to path by rename, as a deploy does.
func Install(t testing.TB, path string, b []byte) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}
