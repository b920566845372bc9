//go:build !linux

package testutil

// EnvNoReusePort: see the Linux version.
const EnvNoReusePort = "HANDOFF_TESTUTIL_NO_REUSEPORT"

// NoReusePortMain does nothing but on Linux.
func NoReusePortMain() {}
