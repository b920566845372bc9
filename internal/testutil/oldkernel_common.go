package testutil

// EnvOldKernel, set to 1 in the environment of a test binary whose
// TestMain calls OldKernelMain first, makes that process a wrapper: it
// execs its arguments (os.Args[1:]) as if on Linux 4.18, the oldest kernel
// handoff supports.
const EnvOldKernel = "HANDOFF_TESTUTIL_OLD_KERNEL"
