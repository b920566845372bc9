//go:build !linux

package testutil

// EnvNoSeccomp: see the Linux version.
const EnvNoSeccomp = "HANDOFF_TESTUTIL_NO_SECCOMP"

// NoSeccompMain does nothing but on Linux.
func NoSeccompMain() {}
