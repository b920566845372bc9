//go:build linux

package adopt

import "golang.org/x/sys/unix"

// auditArch is the seccomp_data.arch of this build's system calls. A call
// made through another ABI (i386's int 0x80, x32, whose numbers have bit 30
// set) is not the bind the filter knows and runs untouched.
const auditArch = unix.AUDIT_ARCH_X86_64

// unlinkCalls are the system calls that remove a file, sent to the primary
// when there is a unix listener.
var unlinkCalls = []uint32{unix.SYS_UNLINK, unix.SYS_UNLINKAT}
