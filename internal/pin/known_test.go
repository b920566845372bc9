//go:build linux

package pin

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// countReads counts, until the test ends, the whole-file reads Pin makes
// of each path.
func countReads(t *testing.T) map[string]int {
	t.Helper()
	reads := map[string]int{}
	testHookRead = func(path string) { reads[path]++ }
	t.Cleanup(func() { testHookRead = nil })
	return reads
}

// settled waits until the kernel's clock has left the tick of the ctime of
// each path, as for a file installed before the deploy: a pin verified
// within that tick is not reused.
func settled(t testing.TB, paths ...string) {
	t.Helper()
	for _, path := range paths {
		var st unix.Stat_t
		if err := unix.Stat(path, &st); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(5 * time.Second); coarseNow() <= st.Ctim.Nano(); {
			if time.Now().After(deadline) {
				t.Fatalf("the clock does not pass the ctime of %s", path)
			}
			time.Sleep(time.Millisecond)
		}
	}
}

// pinnedOnce installs b at path, settled, and pins it, counting reads.
func pinnedOnce(t *testing.T, path string, b []byte) (reads map[string]int, f *File) {
	t.Helper()
	install(t, path, b)
	settled(t, path)
	reads = countReads(t)
	return reads, pinT(t, path, Options{})
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// A large file pinned again unchanged, as an interpreter is at every
// deploy, is not read again: the second pin takes the first one's hash.
func TestPinKnownUnchangedIsNotRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "node")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	f.Truncate(200 << 20) // sparse: 200 MB that cost no disk
	f.WriteAt([]byte("\x7fELF"), 0)
	f.Close()
	settled(t, path)
	reads := countReads(t)

	first := pinT(t, path, Options{})
	if reads[path] != 1 {
		t.Fatalf("first pin: %d reads, want 1", reads[path])
	}
	start := time.Now()
	second := pinT(t, path, Options{Known: []*File{first}})
	took := time.Since(start)
	if reads[path] != 1 {
		t.Errorf("second pin of an unchanged file read it again (%d reads)", reads[path])
	}
	if second.Identity().SHA256 != first.Identity().SHA256 || !second.Same(first) || second.Identity().Size != 200<<20 {
		t.Errorf("second pin %+v, want the first one's identity %+v", second.Identity(), first.Identity())
	}
	t.Logf("second pin of a 200 MB file: %v", took)

	// Without Known, or with the known pin closed, it is read.
	first.Close()
	pinT(t, path, Options{Known: []*File{first}})
	if reads[path] != 2 {
		t.Errorf("a closed known pin was used (%d reads, want 2)", reads[path])
	}
}

// A file rewritten in place with the same size is read again, and its new
// hash is the new content's.
func TestPinKnownRewrittenInPlaceIsRead(t *testing.T) {
	yes, no := system(t, "true"), system(t, "false")
	path := filepath.Join(t.TempDir(), "server")
	reads, first := pinnedOnce(t, path, yes)

	same := make([]byte, len(yes))
	copy(same, no) // the same size, another content
	rewrite(t, path, same)
	second := pinT(t, path, Options{Known: []*File{first}})
	if reads[path] != 2 {
		t.Errorf("a file rewritten in place was not read again (%d reads, want 2)", reads[path])
	}
	if got, want := second.Identity().SHA256, sum(same); got != want {
		t.Errorf("hash after a rewrite in place: %s, want %s", got, want)
	}
	if second.Same(first) {
		t.Error("a rewritten file counts as the same build")
	}
}

// A file replaced by a rename (a new inode, as a package manager does) is
// read again.
func TestPinKnownReplacedByRenameIsRead(t *testing.T) {
	yes, no := system(t, "true"), system(t, "false")
	dir := t.TempDir()
	path := filepath.Join(dir, "server")
	reads, first := pinnedOnce(t, path, yes)

	install(t, filepath.Join(dir, "server.new"), no)
	if err := os.Rename(filepath.Join(dir, "server.new"), path); err != nil {
		t.Fatal(err)
	}
	second := pinT(t, path, Options{Known: []*File{first}})
	if reads[path] != 2 {
		t.Errorf("a file replaced by rename was not read again (%d reads, want 2)", reads[path])
	}
	if got, want := second.Identity().SHA256, sum(no); got != want {
		t.Errorf("hash after a rename over: %s, want %s", got, want)
	}
	if code, _ := run(t, second); code != 1 {
		t.Errorf("the new pin runs exit %d, want the new false's 1", code)
	}
}

// A reused copy is the first pin's sealed memfd, duplicated: it still
// execs, and survives a rewrite in place, once the first pin is closed.
func TestPinKnownReusedCopyOutlivesTheFirstPin(t *testing.T) {
	yes, no := system(t, "true"), system(t, "false")
	path := filepath.Join(t.TempDir(), "server")
	reads, first := pinnedOnce(t, path, yes)
	second := pinT(t, path, Options{Known: []*File{first}})
	if reads[path] != 1 || !second.HasCopy() || second.CopyError() != nil {
		t.Fatalf("second pin: %d reads, copy %v (%v); want 1 read and a copy", reads[path], second.HasCopy(), second.CopyError())
	}
	first.Close()
	rewrite(t, path, no)
	if _, memfd := opened(t, second); !memfd {
		t.Error("after a rewrite in place, Open does not give the copy")
	}
	if code, out := run(t, second); code != 0 {
		t.Fatalf("the reused copy after the first pin closed: exit %d %s, want the pinned true", code, out)
	}
	second.Close()
	third := pinT(t, path, Options{Known: []*File{first, second}})
	if reads[path] != 2 || third.Identity().SHA256 != sum(no) {
		t.Errorf("after every pin closed: %d reads, sha %s; want 2 and the new content's", reads[path], third.Identity().Short())
	}
}

// A script's interpreter held by a known pin is not read again when the
// script is deployed again; the script itself is small.
func TestPinKnownScriptInterpreterIsNotRead(t *testing.T) {
	dir := t.TempDir()
	interp := filepath.Join(dir, "myinterp")
	install(t, interp, system(t, "sh"))
	app := filepath.Join(dir, "app")
	install(t, app, []byte("#!"+interp+"\necho hi\n"))
	settled(t, interp, app)
	reads := countReads(t)
	first := pinT(t, app, Options{})
	install(t, app, []byte("#!"+interp+"\necho changed\n")) // a new release of the script
	second := pinT(t, app, Options{Known: []*File{first}})
	if reads[interp] != 1 || reads[app] != 2 {
		t.Errorf("reads: interpreter %d (want 1), script %d (want 2)", reads[interp], reads[app])
	}
	id, ok := second.Interpreter()
	if want, _ := first.Interpreter(); !ok || id.SHA256 != want.SHA256 {
		t.Errorf("interpreter %+v, want %+v", id, want)
	}
	exe, argv, _, err := second.Exec(nil)
	if err != nil {
		t.Fatal(err)
	}
	exe.Close()
	if len(argv) != 2 || argv[1] != app {
		t.Errorf("argv %q", argv)
	}
	// The command itself is the known interpreter: not read either.
	pinT(t, interp, Options{Known: []*File{second}})
	if reads[interp] != 1 {
		t.Errorf("the interpreter pinned as the command was read again (%d reads)", reads[interp])
	}
}

// A pin verified in the clock tick of the file's last change is not used:
// a write later in that tick could have left the ctime unchanged.
func TestPinKnownRacyIsRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "server")
	reads, first := pinnedOnce(t, path, system(t, "true"))
	first.mu.Lock()
	first.verified = first.seen.Ctime // as if pinned within that tick
	first.mu.Unlock()
	pinT(t, path, Options{Known: []*File{first}})
	if reads[path] != 2 {
		t.Errorf("a pin verified in the tick of the file's ctime was used (%d reads, want 2)", reads[path])
	}
}
