package control

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"golang.org/x/sys/unix"
)

// EnvDir, when set, is the directory of default control sockets,
// for the primary and the client alike.
const EnvDir = "HANDOFF_CONTROL_DIR"

// maxPath is the longest path a unix socket may have on Linux.
const maxPath = 107

// DefaultDir is the directory of a primary's control socket when
// none is given: $HANDOFF_CONTROL_DIR; else /run/handoff for root; else
// $XDG_RUNTIME_DIR/handoff; else $TMPDIR/handoff-UID.
func DefaultDir() string {
	return searchDirs()[0]
}

// searchDirs lists the directories a client searches, the primary's
// default first: a primary started with another environment (a systemd
// service has no XDG_RUNTIME_DIR) used one of the others.
func searchDirs() []string {
	if d := os.Getenv(EnvDir); d != "" {
		return []string{d}
	}
	var dirs []string
	if os.Geteuid() == 0 {
		dirs = append(dirs, "/run/handoff")
	}
	if x := os.Getenv("XDG_RUNTIME_DIR"); x != "" && filepath.IsAbs(x) {
		dirs = append(dirs, filepath.Join(x, "handoff"))
	}
	dirs = append(dirs, filepath.Join(os.TempDir(), "handoff-"+strconv.Itoa(os.Geteuid())))
	return slices.Compact(dirs)
}

// DefaultPath is the control socket of a primary whose first
// listener is bound to addr: DefaultDir()/tcp-HOST:PORT.sock, or
// unix-NAME-HASH.sock for a unix listener, so that several primaries on
// one machine each have their own. A path that would be too long for a
// unix socket gets a hash for a name.
func DefaultPath(network, addr string) string {
	dir := DefaultDir()
	sum := sha256.Sum256([]byte(network + " " + addr))
	hash := hex.EncodeToString(sum[:])
	name := "tcp-" + addr + ".sock"
	if network == "unix" {
		name = "unix-" + filepath.Base(addr) + "-" + hash[:8] + ".sock"
	}
	path := filepath.Join(dir, name)
	if len(path) > maxPath {
		path = filepath.Join(dir, network+"-"+hash[:16]+".sock")
	}
	return path
}

// prepareDir makes sure dir exists, creating it with mode 0700
// (and its missing parents). The default directory must be a directory
// of this user's, not a symbolic link (another user may have planted one
// where the primary looks), and is made 0700 if it is not: it is checked
// and changed through one descriptor opened without following a link. A
// directory named by --control is used as it is.
func prepareDir(dir string, isDefault bool) error {
	if _, err := os.Lstat(dir); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
			return fmt.Errorf("cannot create the directory %s: %v", filepath.Dir(dir), unwrapAll(err))
		}
		if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("cannot create the directory %s: %v", dir, unwrapAll(err))
		}
	}
	if !isDefault {
		fi, err := os.Stat(dir)
		if err != nil {
			return fmt.Errorf("directory %s: %v", dir, unwrapAll(err))
		}
		if !fi.IsDir() {
			return fmt.Errorf("%s exists and is not a directory", dir)
		}
		return nil
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	switch {
	case errors.Is(err, unix.ELOOP):
		return fmt.Errorf("%s is a symbolic link, which handoff does not follow there: remove it", dir)
	case errors.Is(err, unix.ENOTDIR):
		if fi, lerr := os.Lstat(dir); lerr == nil && fi.Mode()&os.ModeSymlink != 0 {
			return fmt.Errorf("%s is a symbolic link, which handoff does not follow there: remove it", dir)
		}
		return fmt.Errorf("%s exists and is not a directory", dir)
	case err != nil:
		return fmt.Errorf("directory %s: %v", dir, unwrapAll(err))
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("directory %s: %v", dir, unwrapAll(err))
	}
	if st.Uid != uint32(os.Geteuid()) {
		return fmt.Errorf("the directory %s belongs to uid %d, not to this user (%d)", dir, st.Uid, os.Geteuid())
	}
	if st.Mode&0o7777 != 0o700 {
		if err := unix.Fchmod(fd, 0o700); err != nil {
			return fmt.Errorf("cannot make %s private (mode 0700): %v", dir, unwrapAll(err))
		}
	}
	return nil
}
