package reload

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"
)

// ErrIncomplete marks an executable that is not ready to start yet: missing
// (deleted and not yet replaced), not executable, still being written, or
// not a whole ELF file or #! script. Waiting for further changes may cure
// it.
var ErrIncomplete = errors.New("executable not complete")

// Complete reports whether the file at path can be started now: it exists,
// is a regular file with an execute bit, has not been modified for at
// least quiet, and is either a `#!` script or an ELF file whose program
// segments and section header table lie within its size. It returns nil,
// or an error wrapping ErrIncomplete that says why not.
//
// A file written in place is checked this way; a file that arrives by
// rename is whole at once and passes as soon as its mtime is older than
// quiet (a rename keeps the mtime of the file written before it).
func Complete(path string, quiet time.Duration) error {
	return complete(path, quiet, time.Now())
}

func complete(path string, quiet time.Duration, now time.Time) error {
	incomplete := func(format string, a ...any) error {
		return fmt.Errorf("%s: %w: %s", path, ErrIncomplete, fmt.Sprintf(format, a...))
	}
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return incomplete("missing")
		}
		return incomplete("%v", unwrapPath(err))
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return incomplete("%v", unwrapPath(err))
	}
	switch {
	case !fi.Mode().IsRegular():
		return incomplete("not a regular file")
	case fi.Mode().Perm()&0o111 == 0:
		return incomplete("not executable")
	case now.Sub(fi.ModTime()) < quiet:
		return incomplete("modified %s ago", now.Sub(fi.ModTime()).Round(time.Millisecond))
	}
	var magic [4]byte
	if _, err := io.ReadFull(f, magic[:2]); err != nil {
		return incomplete("empty or too short")
	}
	if magic[0] == '#' && magic[1] == '!' {
		return nil
	}
	if _, err := io.ReadFull(f, magic[2:]); err != nil || !bytes.Equal(magic[:], []byte(elf.ELFMAG)) {
		return incomplete("neither an ELF file nor a #! script")
	}
	return elfWhole(f, fi.Size(), incomplete)
}

// elfWhole checks that everything the ELF header points to lies inside the
// file: a half-written executable is cut short somewhere before its end,
// where linkers put the section header table.
func elfWhole(f *os.File, size int64, incomplete func(string, ...any) error) error {
	ef, err := elf.NewFile(f)
	if err != nil {
		return incomplete("ELF: %v", err)
	}
	defer ef.Close()
	for _, p := range ef.Progs {
		if end := p.Off + p.Filesz; end > uint64(size) {
			return incomplete("ELF segment ends at %d, past the file's %d bytes", end, size)
		}
	}
	for _, s := range ef.Sections {
		if s.Type == elf.SHT_NOBITS {
			continue
		}
		if end := s.Offset + s.FileSize; end > uint64(size) {
			return incomplete("ELF section %s ends at %d, past the file's %d bytes", s.Name, end, size)
		}
	}
	if len(ef.Progs) == 0 {
		return incomplete("ELF file without program headers")
	}
	return nil
}

func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
