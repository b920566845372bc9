//go:build linux

package runtime

import (
	"os"
	"os/user"
	"strconv"
	"strings"
	"testing"

	"github.com/handoff-dev/handoff/internal/testutil"
)

func TestWorkerCredential(t *testing.T) {
	if c, err := workerCredential(""); c != nil || err != nil {
		t.Fatalf("no --user: %+v, %v", c, err)
	}
	for spec, want := range map[string]string{
		"no-such-user-xyz":        `--user no-such-user-xyz: no such user "no-such-user-xyz"`,
		"root:no-such-group-xyz":  `--user root:no-such-group-xyz: no such group "no-such-group-xyz"`,
		"root:":                   `give USER or USER:GROUP`,
		":root":                   `give USER or USER:GROUP`,
		"no-such-user-xyz:nobody": `no such user`,
	} {
		if c, err := workerCredential(spec); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("workerCredential(%q) = %+v, %v; want an error saying %q", spec, c, err, want)
		}
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		testutil.Need(t, "no user nobody here")
	}
	c, err := workerCredential("nobody")
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
	if c, err = workerCredential(nobody.Uid + ":0"); err != nil || strconv.Itoa(int(c.Uid)) != nobody.Uid || c.Gid != 0 {
		t.Fatalf("numeric %s:0: %+v, %v", nobody.Uid, c, err)
	}
}
