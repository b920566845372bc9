package unixsock

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// ErrLocked is a lock held by another process.
var ErrLocked = errors.New("locked by another process")

// LockFile opens path (creating it, mode 0600, if create) and takes an
// exclusive flock on it without waiting: ErrLocked when another open file
// holds it. The returned file is close-on-exec: no worker or new primary
// inherits it unless passed on explicitly.
func LockFile(path string, create bool) (*os.File, error) {
	flags := os.O_RDWR | unix.O_NOFOLLOW
	if create {
		flags |= os.O_CREATE
	}
	f, err := os.OpenFile(path, flags, 0o600)
	if err != nil {
		return nil, err
	}
	// A regular file: Fd does not touch any socket's mode.
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, ErrLocked
		}
		return nil, err
	}
	return f, nil
}
