//go:build linux

package runtime

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// dirPrefix starts the name of a primary's private directory (mode 0700, in
// $TMPDIR) that holds the workers' notify sockets and the hand-over socket:
// handoff-PID-RANDOM.
const dirPrefix = "handoff-"

// privateDir creates this primary's directory, first removing those left by
// primaries of the same user that were killed before they could clean up.
// A unix socket path has at most 107 bytes, and the sockets inside are
// named like w12-3456.sock: a longer $TMPDIR falls back to /tmp.
func privateDir() (string, error) {
	tmp := os.TempDir()
	if len(tmp) > maxTmpDirLen {
		tmp = "/tmp"
	}
	removeStaleDirs(tmp)
	return os.MkdirTemp(tmp, dirPrefix+strconv.Itoa(os.Getpid())+"-")
}

// maxTmpDirLen leaves room for /handoff-PID-RANDOM/wSLOT-SEQ.sock.
const maxTmpDirLen = 107 - len("/handoff-4194304-1234567890/w9999-99999999.sock")

func removeStaleDirs(tmp string) {
	entries, err := os.ReadDir(tmp)
	if err != nil {
		return
	}
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), dirPrefix)
		if !ok || !e.IsDir() {
			continue
		}
		pidStr, _, ok := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidStr)
		if !ok || err != nil || pid <= 0 || pid == os.Getpid() {
			continue
		}
		path := filepath.Join(tmp, e.Name())
		var st syscall.Stat_t
		if syscall.Lstat(path, &st) != nil || st.Uid != uint32(os.Getuid()) {
			continue
		}
		if err := syscall.Kill(pid, 0); err == syscall.ESRCH {
			os.RemoveAll(path)
		}
	}
}
