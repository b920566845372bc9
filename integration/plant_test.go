//go:build linux

package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/internal/control"
	"github.com/handoff-dev/handoff/runtime"
)

// envFakeControl makes the test binary a fake control server listening
// at its value (see fakeControlMain).
const envFakeControl = "HANDOFF_TEST_FAKE_CONTROL"

// fakeControlMain, in a test binary started with envFakeControl=PATH,
// listens at PATH and answers every request as a primary that has just
// deployed generation 99: what another user plants to fool root's
// handoff commands. It never returns.
func fakeControlMain() {
	path := os.Getenv(envFakeControl)
	if path == "" {
		return
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		os.Stderr.WriteString("fake control: " + err.Error() + "\n")
		os.Exit(1)
	}
	os.Chmod(path, 0o777)
	st := &runtime.Status{Primary: runtime.PrimaryStatus{Pid: os.Getpid(), Generation: 99, Control: path}}
	reply, _ := json.Marshal(control.Reply{OK: true, Message: "done: generation 99 serving", Pid: os.Getpid(), Generation: 99, Status: st})
	for {
		c, err := ln.Accept()
		if err != nil {
			os.Exit(1)
		}
		go func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := bufio.NewReader(c).ReadString('\n'); err == nil {
				c.Write(append(reply, '\n'))
			}
		}()
	}
}

// startFakeControl runs the fake control server as cred's user, listening
// at path, and waits for its socket. exe is a copy of the test binary
// that user may run. It is killed (by pid) when t ends.
func startFakeControl(t *testing.T, exe, path string, cred *syscall.Credential) {
	t.Helper()
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), envFakeControl+"="+path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	end := time.Now().Add(20 * time.Second)
	for {
		if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return
		}
		if time.Now().After(end) {
			t.Fatalf("the fake control server did not listen at %s", path)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestControlClientTrustsNoPlant: another user (nobody) plants the
// directory root's handoff commands search and a fake server answering
// "generation 99" there. Root's plain reload and status (and another
// user's) refuse the directory in one line naming it and exit 1; a fake server's socket
// moved into a trusted directory, or named with --control, is refused by
// its credentials (it runs as nobody). Nothing reports generation 99.
func TestControlClientTrustsNoPlant(t *testing.T) {
	t.Parallel()
	cred := nobody(t)
	base, err := os.MkdirTemp("", "hp-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	os.Chmod(base, 0o755)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(base, "fake")
	if err := copyFile(self, exe, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(base, "handoff")
	if err := copyFile(handoffBin, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	// The victims: root, and a user without privileges. Root searches
	// /run/handoff first: with a primary there (another test's), root's
	// plain commands would reach it, so only the other user searches.
	other := uint32(freeID(t))
	victims := []*syscall.Credential{{Uid: other, Gid: other, Groups: []uint32{}}}
	if socks, _ := filepath.Glob("/run/handoff/*.sock"); len(socks) == 0 {
		victims = append(victims, nil)
	} else {
		t.Logf("/run/handoff holds %v: root's plain commands are not run", socks)
	}
	env := []string{"TMPDIR=" + base, "XDG_RUNTIME_DIR=", "HANDOFF_CONTROL_DIR="}
	for _, victim := range victims {
		uid := 0
		if victim != nil {
			uid = int(victim.Uid)
		}
		planted := filepath.Join(base, "handoff-"+strconv.Itoa(uid))
		if err := os.Mkdir(planted, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(planted, int(cred.Uid), int(cred.Gid)); err != nil {
			t.Fatal(err)
		}
		startFakeControl(t, exe, filepath.Join(planted, "tcp-0.0.0.0:80.sock"), cred)
		for _, cmd := range []string{"reload", "status"} {
			r := runHandoff(t, bin, env, victim, cmd)
			what := "uid " + strconv.Itoa(uid) + ": " + cmd + " with a planted directory"
			if r.code != 1 || strings.Contains(r.stdout, "99") {
				t.Errorf("%s: %s, want exit 1 and no answer of the fake", what, r)
			}
			oneLine(t, what, r.stderr, planted, "uid "+strconv.Itoa(int(cred.Uid)))
		}
	}

	// The fake's socket in a directory of root's, 0700: the directory is
	// trusted, the process that answers is not.
	trusted := filepath.Join(base, "t")
	if err := os.Mkdir(trusted, 0o700); err != nil {
		t.Fatal(err)
	}
	own := filepath.Join(base, "n")
	if err := os.Mkdir(own, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(own, int(cred.Uid), int(cred.Gid)); err != nil {
		t.Fatal(err)
	}
	moved := filepath.Join(own, "moved.sock")
	startFakeControl(t, exe, moved, cred)
	sock := filepath.Join(trusted, "tcp-127.0.0.1:1.sock")
	if err := os.Rename(moved, sock); err != nil {
		t.Fatal(err)
	}
	os.Lchown(sock, 0, 0)
	for _, c := range []struct {
		env  []string
		args []string
	}{
		{nil, []string{"reload", "--control", sock}},
		{nil, []string{"status", "--control", sock}},
		{[]string{"HANDOFF_CONTROL_DIR=" + trusted}, []string{"reload"}},
	} {
		r := runHandoff(t, "", c.env, nil, c.args...)
		what := strings.Join(c.args, " ")
		if r.code != 1 || strings.Contains(r.stdout, "99") {
			t.Errorf("%s, a server run by nobody: %s, want exit 1 and no answer of the fake", what, r)
		}
		oneLine(t, what, r.stderr, sock, "uid "+strconv.Itoa(int(cred.Uid)))
	}
	// control.Call, the commands' client, refuses it too.
	if rep, err := callOnce(sock, "reload"); err == nil {
		t.Errorf("control.Call believed a server run by nobody: %+v", rep)
	}
}

// callOnce sends op to the control socket at path with control.Call,
// bounded by ten seconds.
func callOnce(path, op string) (control.Reply, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return control.Call(ctx, path, control.Request{Op: op})
}
