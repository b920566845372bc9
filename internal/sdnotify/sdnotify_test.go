package sdnotify

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/coreos/go-systemd/v22/daemon"
)

func TestParse(t *testing.T) {
	m := Parse([]byte("READY=1\nSTATUS=warming up: 3/4\nX_CUSTOM=a=b\nnonsense\n=x\nSTOPPING=0"))
	if !m.Ready || m.Stopping || m.Status != "warming up: 3/4" {
		t.Fatalf("got %+v", m)
	}
	if m.Fields["X_CUSTOM"] != "a=b" {
		t.Fatalf("X_CUSTOM = %q", m.Fields["X_CUSTOM"])
	}
	if len(m.Fields) != 4 {
		t.Fatalf("fields %v", m.Fields)
	}
}

func TestSocketReceivesFromGoSystemd(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "w0.sock")
	s, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("NOTIFY_SOCKET", path)
	if ok, err := daemon.SdNotify(false, "STATUS=hi\nREADY=1"); !ok || err != nil {
		t.Fatalf("SdNotify: %v %v", ok, err)
	}
	m, err := s.Read()
	if err != nil || !m.Ready || m.Status != "hi" {
		t.Fatalf("Read: %+v %v", m, err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode: %v %v", fi, err)
	}
	s.Close()
	if _, err := s.Read(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read after close: %v", err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Fatalf("path left behind: %v", err)
	}
}

func TestListenRefusesNonSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "file")
	os.WriteFile(path, nil, 0o600)
	if _, err := Listen(path); err == nil {
		t.Fatal("Listen over a regular file succeeded")
	}
}
