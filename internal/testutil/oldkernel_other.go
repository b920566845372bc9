//go:build !linux

package testutil

// OldKernelSupported reports whether OldKernelMain can work here: only on
// Linux.
func OldKernelSupported() bool { return false }

// OldKernelMain does nothing but on Linux.
func OldKernelMain() {}
