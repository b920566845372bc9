package testutil

import (
	"fmt"
	"os"
	"testing"
)

// EnvNoSkip, set to 1, makes every test run that the machine should be
// able to run: a test that cannot (a program, a kernel feature, root
// missing) fails instead of skipping. CI (CI set, as .ci/run exports it)
// does the same.
const EnvNoSkip = "HANDOFF_NO_SKIP"

// Strict reports whether a missing requirement fails the test rather than
// skipping it: under CI (CI set and not "false" or "0") or with
// HANDOFF_NO_SKIP=1.
func Strict() bool {
	if os.Getenv(EnvNoSkip) == "1" {
		return true
	}
	ci := os.Getenv("CI")
	return ci != "" && ci != "false" && ci != "0"
}

// Need skips t for the reason given, except where every test must run
// (Strict): there it fails t, naming the reason. For a requirement a
// machine set up by .ci/deps meets; an opt-in measurement or a test that
// only makes sense as another user skips with t.Skip instead.
func Need(t testing.TB, format string, args ...any) {
	t.Helper()
	reason := fmt.Sprintf(format, args...)
	if Strict() {
		t.Fatalf("cannot run under CI (%s set): %s", describeStrict(), reason)
	}
	t.Skip(reason)
}

func describeStrict() string {
	if os.Getenv(EnvNoSkip) == "1" {
		return EnvNoSkip + "=1"
	}
	return "CI"
}
