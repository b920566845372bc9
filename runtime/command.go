package runtime

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// resolveCommand finds the executable a deploy runs: looked up in PATH and
// followed through symlinks now, so that a `current -> releases/42` switch
// is seen by the next deploy.
func resolveCommand(name string) (string, error) {
	bad := func(why string) error { return fmt.Errorf("worker command %q: %s", name, why) }
	const notExecutable = "not executable (chmod +x it)"
	path, err := exec.LookPath(name)
	if err != nil {
		var ee *exec.Error
		switch {
		case errors.As(err, &ee) && errors.Is(ee.Err, exec.ErrNotFound) && !strings.Contains(name, "/"):
			return "", bad("not found in PATH")
		case errors.Is(err, fs.ErrNotExist):
			return "", bad("no such file")
		case errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.EACCES):
			return "", bad(notExecutable)
		}
		return "", bad(unwrapAll(err).Error())
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return "", bad(unwrapAll(err).Error())
	}
	real, err = filepath.Abs(real)
	if err != nil {
		return "", err
	}
	fi, err := os.Stat(real)
	if err != nil {
		return "", bad(unwrapAll(err).Error())
	}
	if fi.IsDir() {
		return "", bad("is a directory")
	}
	if unix.Access(real, unix.X_OK) != nil {
		return "", bad(notExecutable)
	}
	return real, nil
}
