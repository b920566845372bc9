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

// ResolveCommand finds the executable a deploy runs: looked up in PATH and
// followed through symlinks now, so that a `current -> releases/42` switch
// is seen by the next deploy.
func ResolveCommand(name string) (string, error) {
	path, err := exec.LookPath(name)
	if err != nil {
		var ee *exec.Error
		switch {
		case errors.As(err, &ee) && errors.Is(ee.Err, exec.ErrNotFound) && !strings.Contains(name, "/"):
			return "", fmt.Errorf("worker command %q: not found in PATH", name)
		case errors.Is(err, fs.ErrNotExist):
			return "", fmt.Errorf("worker command %q: no such file", name)
		case errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.EACCES):
			return "", fmt.Errorf("worker command %q: not executable (chmod +x it)", name)
		}
		return "", fmt.Errorf("worker command %q: %v", name, unwrapAll(err))
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return "", fmt.Errorf("worker command %q: %v", name, unwrapAll(err))
	}
	real, err = filepath.Abs(real)
	if err != nil {
		return "", err
	}
	fi, err := os.Stat(real)
	if err != nil {
		return "", fmt.Errorf("worker command %q: %v", name, unwrapAll(err))
	}
	if fi.IsDir() {
		return "", fmt.Errorf("worker command %q: is a directory", name)
	}
	if unix.Access(real, unix.X_OK) != nil {
		return "", fmt.Errorf("worker command %q: not executable (chmod +x it)", name)
	}
	return real, nil
}
