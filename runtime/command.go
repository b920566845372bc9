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

	"github.com/handoff-dev/handoff/internal/adopt"
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

// workerEnv is the primary's environment less what belongs to the primary
// alone: its own socket activation and notify socket (systemd's), the
// watchdog, handoff's internal variables and tableflip's marker.
func workerEnv(environ []string) []string {
	out := make([]string, 0, len(environ))
	for _, kv := range environ {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(k, "LISTEN_"), k == "NOTIFY_SOCKET", strings.HasPrefix(k, "WATCHDOG_"),
			k == envHandover, k == "HANDOFF_WORKER", k == "HANDOFF_GENERATION", k == "HANDOFF_SHIM_EXEC",
			k == "TABLEFLIP_HAS_PARENT_7DIU3", k == "HANDOFF_CHANNEL_FD", strings.HasPrefix(k, "NODE_CHANNEL_"), k == envStandalone,
			k == adopt.EnvFD:
			continue
		}
		out = append(out, kv)
	}
	return out
}
