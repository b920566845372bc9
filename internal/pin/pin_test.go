//go:build linux

package pin

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cloudflare/tableflip"
	"golang.org/x/sys/unix"

	"github.com/handoff-dev/handoff/internal/testutil"
)

// tableflip's *Fds is the Store a self-upgrade uses.
var _ Store = (*tableflip.Fds)(nil)

const envImport = "PIN_TEST_IMPORT"

// TestMain makes the test binary a second primary for
// TestHandOverToAnotherProcess: it imports a pin handed to it as fds 3
// and 4 and execs the pinned file.
func TestMain(m *testing.M) {
	if tok, ok := os.LookupEnv(envImport); ok {
		os.Exit(importAndExec(tok))
	}
	os.Exit(m.Run())
}

func importAndExec(tok string) int {
	var t Token
	if err := json.Unmarshal([]byte(tok), &t); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 100
	}
	s := fdStore{t.Key: 3, copyKey(t.Key): 4}
	f, err := Import(s, t)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 101
	}
	exe, err := f.Open()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 102
	}
	path := "/proc/self/fd/" + strconv.Itoa(int(exe.Fd()))
	err = syscall.Exec(path, []string{"pinned"}, os.Environ())
	fmt.Fprintln(os.Stderr, err)
	return 103
}

// fdStore is the new primary's side of a hand-over that passed the
// descriptors at known numbers.
type fdStore map[string]int

func (s fdStore) AddFile(string, *os.File) error { return errors.New("read-only") }
func (s fdStore) File(name string) (*os.File, error) {
	fd, ok := s[name]
	if !ok {
		return nil, nil
	}
	return os.NewFile(uintptr(fd), name), nil
}

// mapStore dups what it is given and hands out dups, as tableflip does.
type mapStore struct {
	mu    sync.Mutex
	files map[string]*os.File
}

func (s *mapStore) AddFile(name string, f *os.File) error {
	d, err := dup(f)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.files == nil {
		s.files = map[string]*os.File{}
	}
	if old := s.files[name]; old != nil {
		old.Close()
	}
	s.files[name] = d
	return nil
}

func (s *mapStore) File(name string) (*os.File, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.files[name]
	if f == nil {
		return nil, nil
	}
	return dup(f)
}

func (s *mapStore) close() {
	for _, f := range s.files {
		f.Close()
	}
}

var (
	system  = testutil.Program
	install = testutil.Install
)

// rewrite writes b into the file at path, in place (same inode).
func rewrite(t *testing.T, path string, b []byte) {
	t.Helper()
	var before, after syscall.Stat_t
	syscall.Stat(path, &before)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
	f.Close()
	syscall.Stat(path, &after)
	if before.Ino != after.Ino {
		t.Fatal("not rewritten in place")
	}
}

// run execs what f pins now, from a child that has it at fd 3, and
// returns its exit code and output.
func run(t *testing.T, f *File, args ...string) (int, string) {
	t.Helper()
	exe, err := f.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer exe.Close()
	cmd := &exec.Cmd{Path: "/proc/self/fd/3", Args: append([]string{"pinned"}, args...), ExtraFiles: []*os.File{exe}}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("exec pinned file: %v", err)
	}
	return cmd.ProcessState.ExitCode(), string(out)
}

func pinT(t *testing.T, path string, opt Options) *File {
	t.Helper()
	f, err := Pin(path, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// inode of the file Open returns, and whether it is the memfd copy.
func opened(t *testing.T, f *File) (ino uint64, memfd bool) {
	t.Helper()
	exe, err := f.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer exe.Close()
	st, err := fstat(exe)
	if err != nil {
		t.Fatal(err)
	}
	link, _ := os.Readlink("/proc/self/fd/" + strconv.Itoa(int(exe.Fd())))
	return st.Ino, strings.HasPrefix(link, "/memfd:handoff-pin:")
}

// The normal deploy renames a new build over the path, and a release may
// be deleted: the pin still runs the file it pinned, through the
// original inode (no copy needed).
func TestPinSurvivesRenameOverAndDelete(t *testing.T) {
	yes, no := system(t, "true"), system(t, "false")
	path := filepath.Join(t.TempDir(), "server")
	install(t, path, yes)
	f := pinT(t, path, Options{})
	ino := f.ino

	install(t, path, no)
	if code, out := run(t, f); code != 0 {
		t.Fatalf("after a rename over the path: exit %d %s, want the pinned true", code, out)
	}
	if got, memfd := opened(t, f); got != ino || memfd || f.Modified() {
		t.Errorf("after a rename over: Open gives inode %d (memfd %v, modified %v), want the original %d", got, memfd, f.Modified(), ino)
	}
	// Without a pin, the path runs the new build.
	if err := exec.Command(path).Run(); err == nil {
		t.Fatal("the path should run false now")
	}

	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if code, out := run(t, f); code != 0 {
		t.Fatalf("after a delete: exit %d %s", code, out)
	}
	if got, memfd := opened(t, f); got != ino || memfd {
		t.Errorf("after a delete: Open gives inode %d (memfd %v), want the original %d", got, memfd, ino)
	}
}

// A rename of the file itself, a chmod and a hard link change its ctime,
// not its content: Open hashes it again and goes on with the original.
func TestPinMetadataChangesKeepTheOriginal(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "server")
	install(t, path, system(t, "true"))
	f := pinT(t, path, Options{CopyMax: -1})
	time.Sleep(20 * time.Millisecond) // a coarse ctime would not see the change
	if err := os.Rename(path, path+".bak"); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path+".bak", 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(path+".bak", filepath.Join(dir, "again")); err != nil {
		t.Fatal(err)
	}
	if f.Modified() {
		t.Fatal("a renamed, chmodded, linked file counts as modified")
	}
	if code, out := run(t, f); code != 0 {
		t.Fatalf("exit %d %s", code, out)
	}
}

// A rewrite in place (possible once no process runs the file) is caught:
// the pin runs its copy, or refuses without one.
func TestPinSurvivesRewriteInPlace(t *testing.T) {
	yes, no := system(t, "true"), system(t, "false")
	dir := t.TempDir()
	path := filepath.Join(dir, "server")
	install(t, path, yes)
	f := pinT(t, path, Options{})
	if !f.HasCopy() || f.CopyError() != nil {
		t.Fatalf("a %d-byte file has no copy: %v", len(yes), f.CopyError())
	}
	bare := filepath.Join(dir, "bare")
	install(t, bare, yes)
	nocopy := pinT(t, bare, Options{CopyMax: int64(len(yes)) - 1})
	if nocopy.HasCopy() || !errors.Is(nocopy.CopyError(), ErrNoCopy) {
		t.Fatalf("a file above CopyMax has a copy (%v)", nocopy.CopyError())
	}

	rewrite(t, path, no)
	rewrite(t, bare, no)
	if !f.Modified() || !nocopy.Modified() {
		t.Fatal("a rewrite in place is not seen")
	}
	if code, out := run(t, f); code != 0 {
		t.Fatalf("after a rewrite in place: exit %d %s, want the pinned true", code, out)
	}
	if _, memfd := opened(t, f); !memfd {
		t.Error("after a rewrite in place, Open does not give the copy")
	}
	if _, err := nocopy.Open(); !errors.Is(err, ErrModified) || !strings.Contains(err.Error(), bare) {
		t.Errorf("Open of a rewritten file without a copy: %v, want ErrModified naming it", err)
	}

	// Written back as it was: the original again.
	rewrite(t, path, yes)
	if f.Modified() {
		t.Error("the original content back counts as modified")
	}
	if _, memfd := opened(t, f); memfd {
		t.Error("the original content back, Open still gives the copy")
	}
}

// The copy is sealed: nobody can change it, not even the primary.
func TestPinCopyIsSealed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "server")
	install(t, path, system(t, "true"))
	f := pinT(t, path, Options{})
	f.mu.Lock()
	name := "/proc/self/fd/" + strconv.Itoa(int(f.copy.Fd()))
	f.mu.Unlock()
	w, err := os.OpenFile(name, os.O_RDWR, 0)
	if err == nil {
		_, err = w.Write([]byte("x"))
		w.Close()
	}
	if err == nil {
		t.Fatal("wrote into the pinned copy")
	}
}

func TestPinIdentity(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.sh")
	body := []byte("#!/bin/sh\necho v1\n")
	install(t, path, body)
	mtime := time.Date(2026, 3, 4, 5, 6, 7, 8, time.UTC)
	os.Chtimes(path, mtime, mtime)
	f := pinT(t, path, Options{})
	sum := sha256.Sum256(body)
	id := f.Identity()
	if id.Path != path || id.Size != int64(len(body)) || !id.ModTime.Equal(mtime) || id.SHA256 != hex.EncodeToString(sum[:]) {
		t.Errorf("identity %+v", id)
	}
	if id.Short() != id.SHA256[:12] || !strings.Contains(id.String(), id.Short()) || !f.Script() {
		t.Errorf("short %q, string %q, script %v", id.Short(), id.String(), f.Script())
	}
	// The identity stays the pinned file's.
	install(t, path, []byte("#!/bin/sh\necho v2\n"))
	if f.Identity() != id {
		t.Errorf("identity changed to %+v", f.Identity())
	}
	if code, out := run(t, f); code != 0 || out != "v1\n" {
		t.Errorf("pinned script: exit %d %q", code, out)
	}
}

func TestPinErrors(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o700); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{
		filepath.Join(dir, "missing"): "no such file",
		dir:                           "not a regular file",
		fifo:                          "not a regular file", // and Pin does not block opening it
	} {
		if f, err := Pin(path, Options{}); err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), path) {
			t.Errorf("Pin(%s) = %v, %v; want an error saying %q", path, f, err, want)
		}
	}
}

func fds(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		link, _ := os.Readlink("/proc/self/fd/" + e.Name())
		out = append(out, e.Name()+" "+link)
	}
	return out
}

// Close leaves nothing: no descriptor, no memfd, no file on disk.
func TestCloseLeavesNothing(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	dir := t.TempDir()
	path := filepath.Join(dir, "server")
	install(t, path, system(t, "true"))
	before := fds(t)
	f, err := Pin(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !f.HasCopy() {
		t.Fatal("no copy")
	}
	exe, _ := f.Open()
	exe.Close()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if after := fds(t); strings.Join(after, "\n") != strings.Join(before, "\n") {
		t.Errorf("descriptors before Pin:\n%s\nafter Close:\n%s", strings.Join(before, "\n"), strings.Join(after, "\n"))
	}
	if _, err := f.Open(); !errors.Is(err, ErrClosed) {
		t.Errorf("Open after Close: %v", err)
	}
	if _, err := f.Export(&mapStore{}, "k"); !errors.Is(err, ErrClosed) {
		t.Errorf("Export after Close: %v", err)
	}
	for _, d := range []string{tmp, dir} {
		entries, _ := os.ReadDir(d)
		if d == dir && len(entries) == 1 && entries[0].Name() == "server" {
			continue
		}
		if len(entries) != 0 {
			t.Errorf("%s holds %v", d, entries)
		}
	}
}

// Open and Close may race: Open gets a descriptor of its own or ErrClosed.
func TestOpenRacesClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "server")
	install(t, path, system(t, "true"))
	for range 20 {
		f, err := Pin(path, Options{})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 20 {
					exe, err := f.Open()
					if err != nil {
						if !errors.Is(err, ErrClosed) {
							t.Error(err)
						}
						return
					}
					if _, err := fstat(exe); err != nil {
						t.Error(err)
					}
					exe.Close()
				}
			}()
		}
		f.Close()
		wg.Wait()
	}
}

// exported pins a copy of true, exports it to a store and then rewrites
// the file in place (as false) and deletes it.
func exported(t *testing.T) (*File, *mapStore, Token) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "server")
	install(t, path, system(t, "true"))
	f := pinT(t, path, Options{})
	s := &mapStore{}
	t.Cleanup(s.close)
	tok, err := f.Export(s, "handoff-pin-current")
	if err != nil {
		t.Fatal(err)
	}
	rewrite(t, path, system(t, "false"))
	os.Remove(path)
	return f, s, tok
}

// A pin handed over (as to a new primary) runs the pinned content even
// when the original was replaced, rewritten and deleted meanwhile, and
// the exporter's File is closed.
func TestHandOver(t *testing.T) {
	f, s, tok := exported(t)
	f.Close()

	b, _ := json.Marshal(tok)
	var back Token
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	g, err := Import(s, back)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if !sameIdentity(g.Identity(), f.Identity()) || !g.HasCopy() {
		t.Errorf("imported %+v (copy %v), exported %+v", g.Identity(), g.HasCopy(), f.Identity())
	}
	if code, out := run(t, g); code != 0 {
		t.Fatalf("imported pin: exit %d %s", code, out)
	}

	// Missing or wrong descriptors are refused.
	if _, err := Import(s, Token{Key: "none", Identity: tok.Identity}); err == nil || !strings.Contains(err.Error(), "not handed over") {
		t.Errorf("Import of a key not handed over: %v", err)
	}
	other := filepath.Join(t.TempDir(), "other")
	install(t, other, system(t, "true"))
	o := pinT(t, other, Options{CopyMax: -1})
	if _, err := o.Export(s, "handoff-pin-current"); err != nil {
		t.Fatal(err)
	}
	if _, err := Import(s, back); err == nil || !strings.Contains(err.Error(), "another file") {
		t.Errorf("Import of another file under the key: %v", err)
	}
	otok, _ := o.Export(s, "handoff-pin-previous")
	if g, err := Import(s, otok); err != nil || g.HasCopy() || !errors.Is(g.CopyError(), ErrNoCopy) {
		t.Errorf("Import without a copy: %v, %v", g, err)
	} else {
		g.Close()
	}
	// The copy the first Export left under the key is gone: a pin without
	// a copy puts its original there.
	left, _ := s.File(copyKey("handoff-pin-current"))
	if left == nil {
		t.Fatal("nothing under the copy key")
	}
	defer left.Close()
	if st, err := fstat(left); err != nil || uint64(st.Dev) != otok.Dev || st.Ino != otok.Ino {
		t.Errorf("the copy key still holds another file than the original exported last: %v", err)
	}
}

// The hand-over between two processes: the descriptors cross an exec (as
// tableflip passes them to the new primary), the token as text, and the
// second process runs the pinned file although the first rewrote and
// deleted it.
func TestHandOverToAnotherProcess(t *testing.T) {
	_, s, tok := exported(t)
	orig, _ := s.File(tok.Key)
	cp, _ := s.File(copyKey(tok.Key))
	defer orig.Close()
	defer cp.Close()
	b, _ := json.Marshal(tok)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), envImport+"="+string(b))
	cmd.ExtraFiles = []*os.File{orig, cp}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the other process: %v: %s", err, out)
	}
}

// Exec'd through ExecLink, a process is named after the command; through
// /proc/self/fd/N it would be named N.
func TestExecLinkNamesTheProcess(t *testing.T) {
	sleep := system(t, "sleep")
	dir := t.TempDir()
	path := filepath.Join(dir, "sleep")
	install(t, path, sleep)
	f := pinT(t, path, Options{})
	private := t.TempDir()
	link, err := ExecLink(private, 3, "napper")
	if err != nil {
		t.Fatal(err)
	}
	if again, err := ExecLink(private, 3, "napper"); err != nil || again != link {
		t.Errorf("ExecLink again: %q, %v", again, err)
	}
	if target, _ := os.Readlink(link); target != "/proc/self/fd/3" {
		t.Errorf("link to %q", target)
	}
	for _, bad := range []string{"", ".", "..", "a/b"} {
		if _, err := ExecLink(private, 3, bad); err == nil {
			t.Errorf("ExecLink(%q) made a link", bad)
		}
	}
	got := func(via string) string {
		exe, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		defer exe.Close()
		cmd := &exec.Cmd{Path: via, Args: []string{"sleep", "30"}, ExtraFiles: []*os.File{exe}}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { cmd.Process.Kill(); cmd.Wait() }()
		deadline := time.Now().Add(10 * time.Second)
		for {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", cmd.Process.Pid))
			exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", cmd.Process.Pid))
			if exe == path || time.Now().After(deadline) {
				// /proc/PID/exe names the original file, as without a pin.
				if exe != path {
					t.Errorf("exec'd through %s: /proc/PID/exe is %q, want %s", via, exe, path)
				}
				return strings.TrimSpace(string(b))
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	if c := got(link); c != "napper" {
		t.Errorf("exec'd through the link: comm %q, want napper", c)
	}
	t.Logf("exec'd as /proc/self/fd/3: comm %q", got("/proc/self/fd/3"))
}

func sameIdentity(a, b Identity) bool {
	return a.Path == b.Path && a.Size == b.Size && a.ModTime.Equal(b.ModTime) && a.SHA256 == b.SHA256
}

// An execute-only file is pinned by an O_PATH descriptor: exec'd all the
// same, without a hash or a copy. (Root reads any file: only as another
// user is the file unreadable.)
func TestPinExecuteOnly(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root may read an execute-only file")
	}
	yes, no := system(t, "true"), system(t, "false")
	path := filepath.Join(t.TempDir(), "server")
	install(t, path, yes)
	if err := os.Chmod(path, 0o111); err != nil {
		t.Fatal(err)
	}
	f := pinT(t, path, Options{})
	if id := f.Identity(); id.SHA256 != "" || id.Size != int64(len(yes)) || f.HasCopy() || f.CopyError() == nil {
		t.Errorf("identity %+v, copy %v (%v)", id, f.HasCopy(), f.CopyError())
	}
	install(t, path, no)
	if code, out := run(t, f); code != 0 {
		t.Fatalf("exit %d %s, want the pinned true", code, out)
	}
}
