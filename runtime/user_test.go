//go:build linux

package runtime

import (
	"os"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/handoff-dev/handoff/internal/testutil"
)

func TestWorkerCredential(t *testing.T) {
	if c, env, err := workerCredential(""); c != nil || env != nil || err != nil {
		t.Fatalf("no --user: %+v, %q, %v", c, env, err)
	}
	for spec, want := range map[string]string{
		"no-such-user-xyz":        `--user no-such-user-xyz: no such user "no-such-user-xyz"`,
		"root:no-such-group-xyz":  `--user root:no-such-group-xyz: no such group "no-such-group-xyz"`,
		"root:":                   `give USER or USER:GROUP`,
		":root":                   `give USER or USER:GROUP`,
		"no-such-user-xyz:nobody": `no such user`,
	} {
		if c, _, err := workerCredential(spec); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("workerCredential(%q) = %+v, %v; want an error saying %q", spec, c, err, want)
		}
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		testutil.Need(t, "no user nobody here")
	}
	c, env, err := workerCredential("nobody")
	if os.Geteuid() != 0 {
		if err == nil || !strings.Contains(err.Error(), "only root can run the workers as another user") {
			t.Fatalf("not root: %+v, %v", c, err)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	if strconv.Itoa(int(c.Uid)) != nobody.Uid || strconv.Itoa(int(c.Gid)) != nobody.Gid || c.Groups == nil {
		t.Fatalf("nobody: %+v, want uid %s gid %s and an explicit (maybe empty) group list", c, nobody.Uid, nobody.Gid)
	}
	for _, kv := range []string{"HOME=" + nobody.HomeDir, "USER=nobody", "LOGNAME=nobody"} {
		if !slices.Contains(env, kv) {
			t.Errorf("nobody's environment %q lacks %s", env, kv)
		}
	}
	if c, _, err = workerCredential(nobody.Uid + ":0"); err != nil || strconv.Itoa(int(c.Uid)) != nobody.Uid || c.Gid != 0 {
		t.Fatalf("numeric %s:0: %+v, %v", nobody.Uid, c, err)
	}
}

// TestWorkerCredentialNumericWithoutEntry: a uid that no user has is
// taken, with the gid of the same number (or the one given), no
// supplementary groups, and HOME=/.
func TestWorkerCredentialNumericWithoutEntry(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	id := 54321
	for ; id < 60000; id++ {
		if _, err := user.LookupId(strconv.Itoa(id)); err != nil {
			break
		}
	}
	s := strconv.Itoa(id)
	c, env, err := workerCredential(s)
	if err != nil {
		t.Fatalf("--user %s: %v", s, err)
	}
	if c.Uid != uint32(id) || c.Gid != uint32(id) || c.Groups == nil || len(c.Groups) != 0 {
		t.Errorf("--user %s: %+v, want uid and gid %d and an empty group list", s, c, id)
	}
	want := []string{"HOME=/", "USER=" + s, "LOGNAME=" + s, "SHELL="}
	if !slices.Equal(env, want) {
		t.Errorf("--user %s: environment %q, want %q", s, env, want)
	}
	if c, _, err = workerCredential(s + ":0"); err != nil || c.Uid != uint32(id) || c.Gid != 0 {
		t.Errorf("--user %s:0: %+v, %v", s, c, err)
	}
}

func TestReplaceEnv(t *testing.T) {
	got := replaceEnv([]string{"HOME=/root", "PATH=/bin", "SHELL=/bin/bash", "USER=root"}, []string{"HOME=/", "USER=7", "SHELL="})
	want := []string{"PATH=/bin", "HOME=/", "USER=7"}
	if !slices.Equal(got, want) {
		t.Errorf("replaceEnv: %q, want %q", got, want)
	}
}
