//go:build linux

package integration

import (
	"os"
	"testing"

	"github.com/handoff-dev/handoff/internal/testutil"
)

// oldKernel is how a test runs a process as on Linux 4.18, the oldest
// kernel handoff supports: through this test binary as a wrapper that
// installs a seccomp filter under which every newer system call
// (close_range, pidfd_open, pidfd_send_signal, clone3, ...) fails with
// ENOSYS, for the process and all it starts (see testutil.OldKernelMain).
// The zero value runs it as it is.
type oldKernel struct {
	Wrap []string
	Env  []string
}

func oldKernelWrap(t *testing.T) oldKernel {
	t.Helper()
	if !testutil.OldKernelSupported() {
		testutil.Need(t, "no old-kernel filter on this architecture")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return oldKernel{Wrap: []string{self}, Env: []string{testutil.EnvOldKernel + "=1"}}
}
