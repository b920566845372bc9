//go:build linux

package adopt

import "golang.org/x/sys/unix"

// auditArch is the seccomp_data.arch of this build's system calls. A call
// made through another ABI (32-bit ARM compat) is not the bind the filter
// knows and runs untouched.
const auditArch = unix.AUDIT_ARCH_AARCH64

// unlinkCalls are the system calls that remove a file, sent to the primary
// when there is a unix listener (arm64 has no unlink, only unlinkat).
var unlinkCalls = []uint32{unix.SYS_UNLINKAT}
