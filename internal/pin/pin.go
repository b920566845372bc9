//go:build linux

// Package pin pins the executable of a generation: once a deploy has
// resolved its command, every worker of that generation runs exactly the
// file the deploy found, whatever happens at the path later (a rename over
// it, a delete, a rewrite in place).
//
// # What a pin holds
//
// A File keeps an open descriptor on the original inode, and, for files up
// to Options.CopyMax (DefaultCopyMax), a sealed in-memory copy (a memfd,
// F_SEAL_WRITE|F_SEAL_GROW|F_SEAL_SHRINK) made at pin time, while the bytes
// are read for the identity's SHA-256 anyway. A worker normally execs the
// original inode, through its descriptor: /proc/PID/exe then names the
// file as before (os.Executable, $ORIGIN and assets found next to the
// executable keep working), and the copy costs nothing but its memory. The
// copy is exec'd only once the original inode's content has changed: its
// size, mtime or ctime differ from what the pin saw, and hashing it again
// gives another SHA-256. A file larger than CopyMax, or one the primary may
// not read, has no copy: a rewrite in place is then detected and Open
// refuses (ErrModified) rather than run another build under the pinned
// generation's name.
//
// The choice, against the other ways of holding on to a file:
//
//   - A descriptor (or a hard link) on the original inode costs nothing and
//     survives a rename over the path (the normal deploy: go build -o x.new
//     && mv x.new x) and a delete. It does not survive a rewrite in place
//     (cp, scp or rsync --inplace writing into the same inode), which the
//     kernel refuses (ETXTBSY) only while some process executes the file:
//     after all workers of a generation crashed, or for the previous
//     generation kept for a roll-back, the inode is writable again. A hard
//     link also needs the same file system, which the primary's private
//     directory (in $TMPDIR) rarely shares with the application.
//   - A copy survives everything, but costs its size in memory (a memfd, or
//     a file in a tmpfs $TMPDIR) or on disk, and time at every deploy; a
//     worker that execs the copy sees /proc/PID/exe point at it, so a
//     program that finds its files relative to os.Executable breaks. A copy
//     in the private directory also fails on a $TMPDIR mounted noexec, and
//     is left behind when the primary is killed. A reflink (FICLONE) would
//     be free, but only on the application's own file system (btrfs, xfs).
//   - A memfd copy vanishes with its last descriptor (nothing stale after a
//     SIGKILL) and crosses a self-upgrade as a descriptor, like the
//     original's.
//
// Hence the hybrid: the descriptor for the normal case, at no cost and
// with no change for the worker; the memfd copy for the rare rewrite in
// place, bounded by CopyMax so that a large interpreter (a 100 MB node
// binary) is not held in memory twice per generation for a case that
// package managers, which replace files by rename, never cause.
//
// What is pinned is the executable file. For an interpreted application
// (COMMAND is node or python) that is the interpreter, not the
// application's code, nor shared libraries the executable loads: pin the
// code with release directories (a current -> releases/N symlink switched
// by each deploy, resolved once per deploy), whose files are never written
// again.
//
// # Pinning an unchanged file again
//
// Every deploy pins its command, and a script's interpreter with it: for a
// 100 MB node binary, reading it for its SHA-256 costs about a second at
// every deploy although it has not changed. Options.Known lists the pins
// the caller still holds (not closed); a file to pin that is the same
// inode (device and inode number) with the same size, mtime and ctime, to
// the nanosecond, as one of them, or as one of their interpreters, takes
// that pin's SHA-256, and a duplicate descriptor of its sealed copy,
// instead of being read again. The check is made on the descriptor just
// opened (fstat), against what the known pin last verified, and only a
// known pin whose content was not found modified is used: a file replaced
// by a rename (another inode) or rewritten in place (the kernel sets the
// ctime on every write, and no process can set it back) is read again.
// The duplicated copy is the same sealed memfd, closed with the new File;
// it lives on when the known pin is closed. As with git's "racy" index
// entries, a pin verified during the clock tick of the file's ctime is not
// used: a write later in that same tick could leave the ctime as it was.
//
// # Exec
//
// Open returns a new descriptor of the file to exec now. The launcher
// passes it to the exec step (internal/shim) at a known number N, named in
// HANDOFF_SHIM_EXEC_FD, and the shim execs /proc/self/fd/N, through a
// symlink named like the command (ExecLink, HANDOFF_SHIM_EXEC_VIA) so that
// the kernel names the worker process (/proc/PID/comm, what ps and top
// show) after the command and not after the number N. Open checks the
// content before the fork; Verify checks it again once the worker has
// exec'd, before it runs (the launcher stops it there with ptrace): a
// rewrite in place between the two is never run as the pinned generation.
//
// A #! script is not exec'd through a descriptor: it runs by its own path,
// its pinned interpreter through the descriptor (Exec, script.go).
//
// # Across a self-upgrade
//
// Export hands the descriptors to a Store (tableflip's *Fds satisfies it:
// tableflip passes them to the new primary at exec) and returns a Token,
// plain JSON for the hand-over message, with which Import rebuilds the
// File in the new primary, copy included, even if the file is gone from
// disk by then.
package pin

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultCopyMax is the size up to which a pin keeps an in-memory copy of
// the file: most compiled services and interpreters fit (a Go service is
// 10 to 40 MB, python3 7 MB), a 100 MB node binary does not.
const DefaultCopyMax = 64 << 20

// Options tune Pin.
type Options struct {
	// CopyMax is the largest file that is also copied into memory at pin
	// time, to survive a rewrite in place; 0 means DefaultCopyMax, and a
	// negative value never copies.
	CopyMax int64
	// PATH is where the NAME of a script's "#!/usr/bin/env NAME" is
	// looked up (see Exec); "" means this process's PATH.
	PATH string
	// Known are pins this process holds, not closed: a file that is one
	// of them, or one of their interpreters, unchanged (the same inode
	// with the same size, mtime and ctime) is not read again (see the
	// package doc). The caller keeps them open while Pin runs.
	Known []*File

	noScript bool // pinning an interpreter: a script is not followed
}

// Identity says which file a pin holds, for status and logs.
type Identity struct {
	// Path is the path the file was pinned from.
	Path string `json:"path"`
	// Size and ModTime are the file's when it was pinned.
	Size    int64     `json:"size"`
	ModTime time.Time `json:"mtime"`
	// SHA256 is the hex digest of the content; "" when the primary may
	// not read the file (an execute-only file is pinned all the same).
	SHA256 string `json:"sha256,omitempty"`
}

// Short is the first 12 hex digits of the SHA-256, or "".
func (id Identity) Short() string {
	if len(id.SHA256) < 12 {
		return id.SHA256
	}
	return id.SHA256[:12]
}

func (id Identity) String() string {
	s := fmt.Sprintf("%s (%d bytes, modified %s", id.Path, id.Size, id.ModTime.Format(time.RFC3339))
	if id.SHA256 != "" {
		s += ", sha256 " + id.Short()
	}
	return s + ")"
}

// ErrModified is returned by Open when the pinned file was rewritten in
// place since it was pinned and no copy of it was kept.
var ErrModified = errors.New("the pinned file was modified in place and no copy of it was kept")

// ErrClosed is returned by Open and Export once the File is closed.
var ErrClosed = errors.New("pin closed")

// ErrNoCopy is what CopyError returns for a file above CopyMax, or when
// copies are off.
var ErrNoCopy = errors.New("larger than the copy limit")

// File is a pinned executable. Its methods are safe for concurrent use.
type File struct {
	id     Identity
	script bool
	dev    uint64
	ino    uint64

	mu      sync.Mutex
	orig    *os.File // the original inode (O_RDONLY, or O_PATH when unreadable)
	copy    *os.File // the sealed memfd, read-only; nil without a copy
	copyErr error    // why there is no copy
	// seen is the original's metadata last verified; modified says
	// whether its content then differed from the pinned one.
	seen     meta
	modified bool
	closed   bool
	// verified is the kernel's coarse clock (the one file times come
	// from) just before seen was read, for a content then found to be
	// the pinned one; 0 when unknown.
	verified int64

	// A script's pinned interpreter and the argv before the script's
	// path (script.go); interpErr says why there is none.
	interp     *File
	interpArgv []string
	interpErr  error
	at         *atPath // what the script's path held when last checked
}

// meta is what changes when a file's content may have changed.
type meta struct {
	Size  int64 `json:"size"`
	Mtime int64 `json:"mtime_ns"`
	Ctime int64 `json:"ctime_ns"`
}

func metaOf(st *unix.Stat_t) meta {
	return meta{Size: st.Size, Mtime: st.Mtim.Nano(), Ctime: st.Ctim.Nano()}
}

// pinRetries bounds how often Pin reads a file again that changed while it
// was read (a build still writing it).
const pinRetries = 3

// Pin opens path and pins the file it names now. The file must be a
// regular file; it is read once to compute its SHA-256 (and copied, see
// Options.CopyMax). A file that keeps changing while it is read is an
// error: it is still being written.
func Pin(path string, opt Options) (*File, error) {
	copyMax := opt.CopyMax
	if copyMax == 0 {
		copyMax = DefaultCopyMax
	}
	readable := true
	// Non-blocking: a FIFO at the path must not hang the deploy (it is
	// refused below); a regular file ignores the flag.
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err == unix.EACCES {
		// Execute-only: it can still be exec'd through an O_PATH
		// descriptor, but not hashed nor copied.
		readable = false
		fd, err = unix.Open(path, unix.O_PATH|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("pin %s: %w", path, err)
	}
	f := &File{orig: os.NewFile(uintptr(fd), path), id: Identity{Path: path}}
	head, err := f.pin(readable, copyMax, opt.Known)
	if err == nil && f.script && !opt.noScript {
		err = f.pinInterpreter(head, opt)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("pin %s: %w", path, err)
	}
	return f, nil
}

// pin reads the file, and returns its first bytes (up to headMax).
func (f *File) pin(readable bool, copyMax int64, known []*File) ([]byte, error) {
	for attempt := 1; ; attempt++ {
		t0 := coarseNow()
		before, err := f.identify()
		if err != nil {
			return nil, err
		}
		if !readable {
			f.copyErr = errors.New("the file is not readable")
			return nil, nil
		}
		wantCopy := copyMax > 0 && before.Size <= copyMax
		if head, ok := f.reuse(known, wantCopy); ok {
			return head, nil
		}
		if testHookRead != nil {
			testHookRead(f.id.Path)
		}
		head, err := f.readWhole(before.Size, wantCopy, t0)
		if errors.Is(err, errChanging) && attempt < pinRetries {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		return head, err
	}
}

// identify stats the file, which must be a regular one, and sets f's
// device and inode, identity (size, modification time) and seen metadata
// from what it finds, which it returns.
func (f *File) identify() (unix.Stat_t, error) {
	st, err := fstat(f.orig)
	if err != nil {
		return st, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return st, errors.New("not a regular file")
	}
	f.dev, f.ino = uint64(st.Dev), st.Ino
	f.id.Size = st.Size
	f.id.ModTime = time.Unix(st.Mtim.Unix()).UTC()
	f.seen = metaOf(&st)
	return st, nil
}

// readWhole hashes the whole file (size bytes) and, when wantCopy, copies it
// into a sealed in-memory file, f's copy; the file's metadata must still
// be what identify saw after that (else errChanging), and f is then
// verified as of t0. It returns the file's first bytes (none on error).
func (f *File) readWhole(size int64, wantCopy bool, t0 int64) ([]byte, error) {
	var mem *os.File
	var w io.Writer
	if wantCopy {
		var err error
		mem, err = newMemfd(filepath.Base(f.id.Path))
		if err != nil {
			f.copyErr = fmt.Errorf("no in-memory copy: %v", err)
		} else {
			w = mem
		}
	} else {
		f.copyErr = ErrNoCopy
	}
	sum, head, err := hashCopy(f.orig, size, w)
	if err == nil {
		var after unix.Stat_t
		after, err = fstat(f.orig)
		if err == nil && metaOf(&after) != f.seen {
			err = errChanging
		}
	}
	if err == nil {
		f.verified = t0
	}
	if err == nil && mem != nil {
		mem, err = seal(mem)
	}
	if err != nil {
		if mem != nil {
			mem.Close()
		}
		return nil, err
	}
	f.id.SHA256 = sum
	f.script = bytes.HasPrefix(head, []byte("#!"))
	if mem != nil {
		f.copy, f.copyErr = mem, nil
	}
	return head, nil
}

// testHookRead, when set, is called each time Pin reads a whole file.
var testHookRead func(path string)

// reuse takes the SHA-256 (and, when wantCopy, a duplicate of the copy) of
// a known pin of the same unchanged file as f, whose descriptor, identity
// and seen metadata are set (see the package doc), and returns the file's
// first bytes. ok is false when no known pin fits: the file is read.
func (f *File) reuse(known []*File, wantCopy bool) (head []byte, ok bool) {
	sum, cp, verified, ok := lookup(known, f.dev, f.ino, f.seen, wantCopy)
	if !ok {
		return nil, false
	}
	// The #! line, for a script's interpreter: one small read, and the
	// file unchanged after it.
	buf := make([]byte, headMax)
	n, err := f.orig.ReadAt(buf, 0)
	if err != nil && err != io.EOF {
		ok = false
	} else if after, err := fstat(f.orig); err != nil || metaOf(&after) != f.seen {
		ok = false
	}
	if !ok {
		if cp != nil {
			cp.Close()
		}
		return nil, false
	}
	f.id.SHA256, head, f.verified = sum, buf[:n], verified
	f.script = bytes.HasPrefix(head, []byte("#!"))
	if cp != nil {
		f.copy, f.copyErr = cp, nil
	} else {
		f.copyErr = ErrNoCopy
	}
	return head, true
}

// lookup finds among known (and their interpreters) an open pin of the
// inode dev/ino whose content, last verified with metadata m, was the
// pinned one, and returns its SHA-256, when wantCopy a duplicate of its
// copy (it must have one), and when it was verified.
func lookup(known []*File, dev, ino uint64, m meta, wantCopy bool) (sum string, cp *os.File, verified int64, ok bool) {
	for _, k := range known {
		if k == nil {
			continue
		}
		if k.dev == dev && k.ino == ino && k.id.SHA256 != "" {
			if sum, cp, verified, ok = k.reusable(m, wantCopy); ok {
				return sum, cp, verified, true
			}
		}
		if k.interp != nil {
			if sum, cp, verified, ok = lookup([]*File{k.interp}, dev, ino, m, wantCopy); ok {
				return sum, cp, verified, true
			}
		}
	}
	return "", nil, 0, false
}

// reusable is lookup's check of one pin of the inode.
func (f *File) reusable(m meta, wantCopy bool) (string, *os.File, int64, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed || f.modified || f.seen != m || f.verified <= m.Ctime || wantCopy && f.copy == nil {
		return "", nil, 0, false
	}
	if !wantCopy {
		return f.id.SHA256, nil, f.verified, true
	}
	cp, err := dup(f.copy)
	if err != nil {
		return "", nil, 0, false
	}
	return f.id.SHA256, cp, f.verified, true
}

// coarseNow is the clock the kernel stamps file times with (at its
// coarsest: a finer stamp only makes a later write's ctime differ more).
func coarseNow() int64 {
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_REALTIME_COARSE, &ts) != nil {
		return 0
	}
	return ts.Nano()
}

var errChanging = errors.New("the file changed while it was read: is it still being written?")

// hashCopy reads size bytes of f from offset 0, returning their SHA-256 and
// first bytes, and writes them to w as well if it is not nil.
func hashCopy(f *os.File, size int64, w io.Writer) (sum string, head []byte, err error) {
	h := sha256.New()
	dst := io.Writer(h)
	if w != nil {
		dst = io.MultiWriter(h, w)
	}
	hw := &headWriter{w: dst}
	n, err := io.CopyBuffer(hw, io.NewSectionReader(f, 0, size), make([]byte, 1<<20))
	if err != nil {
		return "", nil, err
	}
	if n != size {
		return "", nil, errChanging
	}
	return hex.EncodeToString(h.Sum(nil)), hw.head, nil
}

// headWriter keeps the first bytes written through it.
type headWriter struct {
	w    io.Writer
	head []byte
}

func (h *headWriter) Write(p []byte) (int, error) {
	if len(h.head) < headMax {
		h.head = append(h.head, p[:min(len(p), headMax-len(h.head))]...)
	}
	return h.w.Write(p)
}

// newMemfd creates an executable memfd that may be sealed.
func newMemfd(name string) (*os.File, error) {
	name = "handoff-pin:" + name
	flags := unix.MFD_CLOEXEC | unix.MFD_ALLOW_SEALING
	fd, err := unix.MemfdCreate(name, flags|unix.MFD_EXEC)
	if err == unix.EINVAL {
		// Before Linux 6.3, every memfd is executable and MFD_EXEC is
		// unknown.
		fd, err = unix.MemfdCreate(name, flags)
	}
	if err != nil {
		return nil, os.NewSyscallError("memfd_create", err)
	}
	return os.NewFile(uintptr(fd), name), nil
}

// seal makes the copy immutable and returns a read-only descriptor of it:
// exec refuses (ETXTBSY) a file that is open for writing anywhere.
func seal(mem *os.File) (*os.File, error) {
	defer mem.Close()
	var ro *os.File
	err := control(mem, func(fd int) error {
		if err := unix.Fchmod(fd, 0o555); err != nil {
			return os.NewSyscallError("fchmod", err)
		}
		seals := unix.F_SEAL_SEAL | unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
			return os.NewSyscallError("seal", err)
		}
		var err error
		ro, err = os.Open("/proc/self/fd/" + strconv.Itoa(fd))
		return err
	})
	return ro, err
}

// Identity says which file is pinned.
func (f *File) Identity() Identity { return f.id }

// Same reports whether f and g pin the same file: the same content (the
// same SHA-256), or, when one could not be read, the same inode with the
// same size and modification time.
func (f *File) Same(g *File) bool {
	if (f.interp == nil) != (g.interp == nil) ||
		f.interp != nil && (!f.interp.Same(g.interp) || !slices.Equal(f.interpArgv, g.interpArgv)) {
		return false
	}
	if f.id.SHA256 != "" && g.id.SHA256 != "" {
		return f.id.SHA256 == g.id.SHA256
	}
	return f.dev == g.dev && f.ino == g.ino && f.id.Size == g.id.Size && f.id.ModTime.Equal(g.id.ModTime)
}

// Script reports whether the file is a #! script.
func (f *File) Script() bool { return f.script }

// HasCopy reports whether an in-memory copy was kept.
func (f *File) HasCopy() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.copy != nil
}

// CopyError says why no copy was kept (ErrNoCopy above the limit), or is
// nil when there is one.
func (f *File) CopyError() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.copyErr
}

// Open returns a new descriptor (close-on-exec; the caller closes it) of
// the file to exec: the original inode while its content is the pinned
// one, else the copy. Without a copy, a rewritten original is ErrModified.
//
// A change of the original's size, mtime or ctime makes Open read it again
// to compare its SHA-256 (once per change): a rename over the path or a
// delete change the ctime but not the content.
func (f *File) Open() (*os.File, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil, ErrClosed
	}
	src := f.orig
	if f.modifiedLocked() {
		if f.copy == nil {
			return nil, fmt.Errorf("%s: %w", f.id.Path, ErrModified)
		}
		src = f.copy
	}
	return dup(src)
}

// Modified reports whether the original's content has changed since it
// was pinned (see Open).
func (f *File) Modified() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return !f.closed && f.modifiedLocked()
}

func (f *File) modifiedLocked() bool {
	t0 := coarseNow()
	st, err := fstat(f.orig)
	if err != nil {
		return true
	}
	now := metaOf(&st)
	if now == f.seen {
		return f.modified
	}
	switch {
	case now.Size != f.id.Size:
		f.modified = true
	case f.id.SHA256 == "":
		// Unreadable: the mtime is all there is to go by.
		f.modified = now.Mtime != f.id.ModTime.UnixNano()
	default:
		sum, _, err := hashCopy(f.orig, now.Size, nil)
		after, serr := fstat(f.orig)
		if err != nil || serr != nil || metaOf(&after) != now {
			// Being written right now: not the pinned content, and not
			// worth remembering.
			return true
		}
		f.modified = sum != f.id.SHA256
	}
	f.seen, f.verified = now, t0
	return f.modified
}

// Close releases the pin's descriptors; the memory of the copy goes with
// the last descriptor of it (one a worker or a Store still holds keeps
// it). Close is idempotent.
func (f *File) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil
	}
	f.closed = true
	err := f.orig.Close()
	if f.copy != nil {
		f.copy.Close()
	}
	if f.interp != nil {
		f.interp.Close()
	}
	return err
}

// Store holds descriptors across a self-upgrade; tableflip's *Fds is one.
type Store interface {
	AddFile(name string, file *os.File) error
	File(name string) (*os.File, error)
}

// Token describes an exported File, to rebuild it with Import in another
// process; it is plain JSON.
type Token struct {
	Key      string   `json:"key"`
	Identity Identity `json:"identity"`
	Copy     bool     `json:"copy,omitempty"`
	Script   bool     `json:"script,omitempty"`
	Dev      uint64   `json:"dev"`
	Ino      uint64   `json:"ino"`
	Seen     meta     `json:"seen"`
	Modified bool     `json:"modified,omitempty"`
	// CopyError is why no copy was kept.
	CopyError string `json:"copy_error,omitempty"`
	// Interp is a script's pinned interpreter (under key.interp), with
	// the argv before the script's path; InterpError says why a script
	// has none.
	Interp      *Token   `json:"interp,omitempty"`
	InterpArgv  []string `json:"interp_argv,omitempty"`
	InterpError string   `json:"interp_error,omitempty"`
}

// copyKey names the copy's descriptor next to the original's.
func copyKey(key string) string { return key + ".copy" }

// Export adds f's descriptors to s under key (and key.copy) and returns
// the Token that Import needs. tableflip keeps what it is given until it
// stops, passing it to every new primary: use a fixed set of keys (one per
// generation kept, such as "handoff-pin-current"), so that a later Export
// under the same key replaces what an earlier one added. Without a copy,
// key.copy gets the original again: a copy an earlier Export left there
// is dropped rather than kept in memory.
func (f *File) Export(s Store, key string) (Token, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return Token{}, ErrClosed
	}
	t := Token{Key: key, Identity: f.id, Copy: f.copy != nil, Script: f.script, Dev: f.dev, Ino: f.ino,
		Seen: f.seen, Modified: f.modified}
	if f.copyErr != nil {
		t.CopyError = f.copyErr.Error()
	}
	if err := s.AddFile(key, f.orig); err != nil {
		return Token{}, fmt.Errorf("hand over %s: %w", f.id.Path, err)
	}
	cp := f.copy
	if cp == nil {
		cp = f.orig
	}
	if err := s.AddFile(copyKey(key), cp); err != nil {
		return Token{}, fmt.Errorf("hand over the copy of %s: %w", f.id.Path, err)
	}
	if f.interp != nil {
		it, err := f.interp.Export(s, key+".interp")
		if err != nil {
			return Token{}, err
		}
		t.Interp, t.InterpArgv = &it, f.interpArgv
	} else if f.interpErr != nil {
		t.InterpError = f.interpErr.Error()
	}
	return t, nil
}

// Import rebuilds a File exported by another process from the descriptors
// s holds, checking that they are the files t describes.
func Import(s Store, t Token) (*File, error) {
	orig, err := s.File(t.Key)
	if err == nil && orig == nil {
		err = errors.New("not handed over")
	}
	if err != nil {
		return nil, fmt.Errorf("pinned %s (%s): %w", t.Identity.Path, t.Key, err)
	}
	f := &File{orig: orig, id: t.Identity, script: t.Script, dev: t.Dev, ino: t.Ino, seen: t.Seen, modified: t.Modified}
	if t.CopyError != "" {
		f.copyErr = errors.New(t.CopyError)
		if t.CopyError == ErrNoCopy.Error() {
			f.copyErr = ErrNoCopy
		}
	}
	fail := func(err error) (*File, error) {
		f.Close()
		return nil, fmt.Errorf("pinned %s (%s): %w", t.Identity.Path, t.Key, err)
	}
	st, err := fstat(orig)
	if err != nil {
		return fail(err)
	}
	if uint64(st.Dev) != t.Dev || st.Ino != t.Ino {
		return fail(errors.New("the handed-over descriptor is another file"))
	}
	if t.Copy {
		c, err := s.File(copyKey(t.Key))
		if err == nil && c == nil {
			err = errors.New("its copy was not handed over")
		}
		if err != nil {
			return fail(err)
		}
		f.copy = c
		cst, err := fstat(c)
		if err != nil {
			return fail(err)
		}
		if cst.Size != t.Identity.Size {
			return fail(errors.New("the handed-over copy has another size"))
		}
	}
	if t.Interp != nil {
		if f.interp, err = Import(s, *t.Interp); err != nil {
			return fail(err)
		}
		f.interpArgv = t.InterpArgv
	} else if t.Script {
		f.interpErr = errors.New(cmp.Or(t.InterpError, "pinned by an earlier handoff"))
	}
	return f, nil
}

// ExecLink returns a path through which a process that holds a pinned file
// at descriptor fd execs it under the name name: the symlink
// dir/fdN/name -> /proc/self/fd/N, made if missing. The kernel names a
// process after the last element of the path it was exec'd by
// (/proc/PID/comm, what ps, top and pgrep show): exec'd as /proc/self/fd/N
// a worker would be called "N". The link is the same for every file
// pinned at that number; dir should be the primary's private directory
// (searchable by the workers' user), which takes the links with it.
func ExecLink(dir string, fd int, name string) (string, error) {
	if name == "" || name == "." || name == ".." || filepath.Base(name) != name {
		return "", fmt.Errorf("exec link: bad name %q", name)
	}
	sub := filepath.Join(dir, "fd"+strconv.Itoa(fd))
	if err := os.Mkdir(sub, 0o711); err != nil && !errors.Is(err, os.ErrExist) {
		return "", fmt.Errorf("exec link: %w", err)
	}
	link := filepath.Join(sub, name)
	target := "/proc/self/fd/" + strconv.Itoa(fd)
	err := os.Symlink(target, link)
	if errors.Is(err, os.ErrExist) {
		if got, rerr := os.Readlink(link); rerr == nil && got == target {
			return link, nil
		}
	}
	if err != nil {
		return "", fmt.Errorf("exec link: %w", err)
	}
	return link, nil
}

func fstat(f *os.File) (unix.Stat_t, error) {
	var st unix.Stat_t
	err := control(f, func(fd int) error { return unix.Fstat(fd, &st) })
	if err != nil {
		return st, os.NewSyscallError("fstat", err)
	}
	return st, nil
}

// dup returns a close-on-exec duplicate of f.
func dup(f *os.File) (*os.File, error) {
	var out *os.File
	err := control(f, func(fd int) error {
		nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return os.NewSyscallError("dup", err)
		}
		out = os.NewFile(uintptr(nfd), f.Name())
		return nil
	})
	return out, err
}

// control runs fn with f's descriptor, which stays open meanwhile.
func control(f *os.File, fn func(fd int) error) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = fn(int(fd)) }); err != nil {
		return err
	}
	return ferr
}
