//go:build !linux

package testutil

// EnvNoPtrace: see the Linux version.
const EnvNoPtrace = "HANDOFF_TESTUTIL_NO_PTRACE"

// NoPtraceMain does nothing but on Linux.
func NoPtraceMain() {}
