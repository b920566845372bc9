//go:build linux

package pin

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// A #! script is pinned differently from a binary: an interpreter finds
// what belongs to the script next to the path it was started by (Python's
// sys.path[0], Node's require('./x') and __dirname, a shell's
// $(dirname "$0")), so a script must run by its own path, never by a
// descriptor or a link in another directory. What can be pinned honestly
// is its interpreter: the file named on its #! line (for
// "#!/usr/bin/env NAME", NAME as PATH finds it at the deploy), exec'd
// through its descriptor with the argv the kernel would give it
// (interpreter, optional argument, the script's path, the arguments).
// The script itself runs from its path; its SHA-256 is checked at every
// start, and a start whose script is not the deployed content any more is
// told (Exec's note), not hidden. An interpreter that is itself a script
// (a version manager's shim) is not pinned: the kernel then runs the
// script by its path as without a pin.

// headMax is how much of a file's beginning is kept to read its #! line
// (Linux reads 256 bytes, BINPRM_BUF_SIZE).
const headMax = 256

// shebang parses the #! line of a script as Linux does (binfmt_script):
// the interpreter up to the first blank, and the rest of the line, trimmed
// of blanks, as one optional argument. ok is false when there is no
// interpreter to read.
func shebang(head []byte) (interp, arg string, ok bool) {
	if !bytes.HasPrefix(head, []byte("#!")) {
		return "", "", false
	}
	line := head[2:]
	if i := bytes.IndexByte(line, '\n'); i >= 0 {
		line = line[:i]
	} else if len(head) >= headMax {
		return "", "", false
	}
	line = bytes.Trim(line, " \t")
	name, rest, _ := bytes.Cut(line, []byte{' '})
	if i := bytes.IndexByte(name, '\t'); i >= 0 {
		name, rest = name[:i], line[i+1:]
	}
	if len(name) == 0 {
		return "", "", false
	}
	return string(name), string(bytes.Trim(rest, " \t")), true
}

// pinInterpreter pins the interpreter of the script f (see above).
func (f *File) pinInterpreter(head []byte, opt Options) error {
	interp, arg, ok := shebang(head)
	if !ok {
		f.interpErr = errors.New("its #! line names no interpreter")
		return nil
	}
	path, argv := interp, []string{interp}
	if arg != "" {
		argv = append(argv, arg)
	}
	if filepath.Base(interp) == "env" && arg != "" && !strings.ContainsAny(arg, " \t=") && !strings.HasPrefix(arg, "-") {
		found, err := lookPath(arg, opt.PATH)
		if err != nil {
			return fmt.Errorf("its interpreter (%s %s): %w", interp, arg, err)
		}
		path, argv = found, []string{arg}
	}
	if !filepath.IsAbs(path) {
		f.interpErr = fmt.Errorf("its interpreter %s is a relative path", path)
		return nil
	}
	if real, err := filepath.EvalSymlinks(path); err == nil {
		path = real
	}
	opt.noScript = true
	g, err := Pin(path, opt)
	if err != nil {
		return fmt.Errorf("its interpreter: %w", err)
	}
	if g.script {
		g.Close()
		f.interpErr = fmt.Errorf("its interpreter %s is itself a script", path)
		return nil
	}
	f.interp, f.interpArgv = g, argv
	return nil
}

// lookPath finds name in the directories of path (a PATH value; "" means
// this process's) as env(1) does, skipping empty entries.
func lookPath(name, path string) (string, error) {
	if path == "" {
		path = os.Getenv("PATH")
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			continue
		}
		p := filepath.Join(dir, name)
		var st unix.Stat_t
		if unix.Stat(p, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFREG && unix.Access(p, unix.X_OK) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found in PATH", name)
}

// Interpreter is the pinned interpreter of a #! script, if it has one.
func (f *File) Interpreter() (Identity, bool) {
	if f.interp == nil {
		return Identity{}, false
	}
	return f.interp.id, true
}

// Describe says in words what f pins, for status and logs.
func (f *File) Describe() string {
	if !f.script {
		if f.id.SHA256 == "" {
			return "binary pinned (unreadable: identified by its inode)"
		}
		return "binary pinned (sha256 " + f.id.Short() + ")"
	}
	s := "script: "
	if f.interp != nil {
		s += "interpreter " + f.interp.id.Path + " pinned"
		if sum := f.interp.id.Short(); sum != "" {
			s += " (sha256 " + sum + ")"
		}
	} else {
		s += "interpreter not pinned (" + f.interpErr.Error() + ")"
	}
	return s + "; the script runs from its path (sha256 " + f.id.Short() + ", checked at each start)"
}

// Exec says how to start the pinned command now, args being its argv
// (args[0] included): exe is a new descriptor (close-on-exec; the caller
// closes it) of the file to exec, or nil to exec the command by its path;
// argv is what to exec it with. For a binary that is Open and args. For a
// script, exe is its pinned interpreter and argv the interpreter's, the
// script's path among them; note says, when the script at its path is
// not the pinned content any more, how it differs ("" when it is the
// same).
func (f *File) Exec(args []string) (exe *os.File, argv []string, note string, err error) {
	if !f.script {
		exe, err = f.Open()
		return exe, args, "", err
	}
	note, err = f.scriptChanged()
	if err != nil {
		return nil, nil, "", err
	}
	if f.interp == nil {
		return nil, args, note, nil
	}
	if exe, err = f.interp.Open(); err != nil {
		return nil, nil, "", err
	}
	argv = append(append([]string(nil), f.interpArgv...), f.id.Path)
	if len(args) > 1 {
		argv = append(argv, args[1:]...)
	}
	return exe, argv, note, nil
}

// ScriptChanged says, for a #! script, how the script at its path differs
// from the pinned one ("" when it does not, and always for a binary, which
// runs from the pin); an error when it cannot be read there.
func (f *File) ScriptChanged() (string, error) {
	if !f.script {
		return "", nil
	}
	return f.scriptChanged()
}

// atPath is what scriptChanged last found at the script's path.
type atPath struct {
	dev, ino uint64
	meta     meta
	note     string
}

// scriptChanged compares the script at its path with the pinned one, by
// its SHA-256 (once per change of the file there: its inode, size, mtime
// or ctime).
func (f *File) scriptChanged() (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return "", ErrClosed
	}
	if f.at == nil {
		f.at = &atPath{dev: f.dev, ino: f.ino, meta: f.seen}
	}
	file, err := os.Open(f.id.Path)
	if err != nil {
		return "", fmt.Errorf("the script %s is gone: %w", f.id.Path, err)
	}
	defer file.Close()
	st, err := fstat(file)
	if err != nil {
		return "", err
	}
	if st.Mode&0o111 == 0 {
		// The kernel would refuse to exec it; so does a start.
		return "", fmt.Errorf("the script %s is not executable (chmod +x it)", f.id.Path)
	}
	now := atPath{dev: uint64(st.Dev), ino: st.Ino, meta: metaOf(&st)}
	if now.dev == f.at.dev && now.ino == f.at.ino && now.meta == f.at.meta {
		return f.at.note, nil
	}
	sum, _, err := hashCopy(file, st.Size, nil)
	if err != nil {
		return "", fmt.Errorf("the script %s: %w", f.id.Path, err)
	}
	if sum != f.id.SHA256 {
		now.note = fmt.Sprintf("the script at %s is not the one deployed (sha256 %s, now %s)",
			f.id.Path, f.id.Short(), Identity{SHA256: sum}.Short())
	}
	f.at = &now
	return now.note, nil
}

// Verify checks the process pid, stopped right after its exec (before it
// ran any instruction of the program), against the pin: that it executes
// the pinned file (a script's pinned interpreter) with the pinned content,
// or the copy. From its exec on, the kernel refuses to write into the
// file a process executes (ETXTBSY), so what Verify finds is what the
// process runs.
func (f *File) Verify(pid int) error {
	target := f
	if f.script {
		if f.interp == nil {
			return nil
		}
		target = f.interp
	}
	fd, err := unix.Open(fmt.Sprintf("/proc/%d/exe", pid), unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("verify the exec of %s: %w", target.id.Path, err)
	}
	var st unix.Stat_t
	err = unix.Fstat(fd, &st)
	unix.Close(fd)
	if err != nil {
		return fmt.Errorf("verify the exec of %s: %w", target.id.Path, err)
	}
	return target.verify(&st)
}

// VerifyExec is Verify for a worker that exec'd passed, the descriptor
// Exec gave its launcher. Where the primary may not look at the worker's
// executable (a worker of another user, and no CAP_SYS_PTRACE: Docker's
// default), it checks passed instead: the worker exec'd that very file
// (the exec step runs the descriptor it was given), and from its exec on
// the kernel refuses writes into it, so the pinned content unchanged now
// is the content the worker runs.
func (f *File) VerifyExec(pid int, passed *os.File) error {
	err := f.Verify(pid)
	if passed == nil || !errors.Is(err, fs.ErrPermission) {
		return err
	}
	target := f
	if f.script && f.interp != nil {
		target = f.interp
	}
	st, serr := fstat(passed)
	if serr != nil {
		return fmt.Errorf("verify the exec of %s: %w", target.id.Path, serr)
	}
	return target.verify(&st)
}

// ErrNotPinned is what Verify finds when a process runs other content
// than the pinned one.
var ErrNotPinned = errors.New("the exec'd file is not the pinned content")

func (f *File) verify(st *unix.Stat_t) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return ErrClosed
	}
	if f.copy != nil {
		if cst, err := fstat(f.copy); err == nil && cst.Dev == st.Dev && cst.Ino == st.Ino {
			return nil
		}
	}
	if uint64(st.Dev) != f.dev || st.Ino != f.ino {
		return fmt.Errorf("%s: %w (another file)", f.id.Path, ErrNotPinned)
	}
	if f.modifiedLocked() {
		return fmt.Errorf("%s: %w (rewritten in place before the exec)", f.id.Path, ErrNotPinned)
	}
	return nil
}
