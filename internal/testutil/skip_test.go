package testutil

import (
	"fmt"
	"testing"
)

// fakeTB records how Need ended a test.
type fakeTB struct {
	testing.TB
	ended string // "fatal: ..." or "skip: ..."
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Fatalf(format string, args ...any) {
	if f.ended == "" {
		f.ended = "fatal: " + fmt.Sprintf(format, args...)
	}
}
func (f *fakeTB) Skip(args ...any) {
	if f.ended == "" {
		f.ended = "skip: " + fmt.Sprint(args...)
	}
}

// Under CI (or HANDOFF_NO_SKIP=1) a missing requirement fails the test;
// elsewhere it skips it.
func TestNeedFailsUnderCI(t *testing.T) {
	for _, c := range []struct {
		ci, noSkip string
		want       string
	}{
		{"", "", "skip: no widget here"},
		{"false", "", "skip: no widget here"},
		{"0", "", "skip: no widget here"},
		{"true", "", "fatal: cannot run under CI (CI set): no widget here"},
		{"1", "", "fatal: cannot run under CI (CI set): no widget here"},
		{"", "1", "fatal: cannot run under CI (HANDOFF_NO_SKIP=1 set): no widget here"},
	} {
		t.Setenv("CI", c.ci)
		t.Setenv(EnvNoSkip, c.noSkip)
		f := &fakeTB{}
		Need(f, "no %s here", "widget")
		if f.ended != c.want {
			t.Errorf("CI=%q %s=%q: %q, want %q", c.ci, EnvNoSkip, c.noSkip, f.ended, c.want)
		}
	}
}
