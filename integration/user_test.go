//go:build linux

package integration

import (
	"bytes"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-dev/handoff/internal/testutil"
)

// openToAll makes dir and its parent (the test's temporary directories)
// reachable by another user, as /srv/app would be.
func openToAll(t *testing.T, dirs ...string) {
	t.Helper()
	for _, d := range dirs {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

// TestUserRunsWorkersAsNobody: as root, --user nobody runs every worker as
// nobody (uid, gid, no supplementary group of root's) while the primary
// stays root; workers become ready through their notify sockets, a deploy
// rolls them as nobody too, and the primary shuts down cleanly.
func TestUserRunsWorkersAsNobody(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		testutil.Need(t, "needs root")
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		testutil.Need(t, "no user nobody")
	}
	p := StartPrimary(t, Options{Flags: []string{"--user", "nobody"}, Prepare: func(dir string) {
		openToAll(t, filepath.Dir(dir), dir, filepath.Join(dir, "tmp"))
	}})
	check := func(gen string) {
		t.Helper()
		examined := 0
		for pid := range p.LiveWorkers() {
			st, ok := readStatus(pid)
			if !ok {
				continue
			}
			examined++
			uids, gids := strings.Fields(st["Uid"]), strings.Fields(st["Gid"])
			if len(uids) != 4 || len(gids) != 4 {
				t.Fatalf("worker %d: Uid %q Gid %q", pid, st["Uid"], st["Gid"])
			}
			for _, u := range uids {
				if u != nobody.Uid {
					t.Errorf("%s worker %d runs with uids %v, want all %s (nobody)", gen, pid, uids, nobody.Uid)
					break
				}
			}
			for _, g := range gids {
				if g != nobody.Gid {
					t.Errorf("%s worker %d runs with gids %v, want all %s", gen, pid, gids, nobody.Gid)
					break
				}
			}
			for _, g := range strings.Fields(st["Groups"]) {
				if g == "0" {
					t.Errorf("%s worker %d keeps root's group: Groups %q", gen, pid, st["Groups"])
				}
			}
		}
		if examined < p.Workers {
			t.Errorf("%s workers: examined %d live worker(s), want %d (live per the log: %v)", gen, examined, p.Workers, p.LiveWorkers())
		}
	}
	check("first")
	checkUserEnv(t, p, map[string]string{"HOME": nobody.HomeDir, "USER": "nobody", "LOGNAME": "nobody"})
	if st, _ := readStatus(p.PID); !strings.HasPrefix(st["Uid"], "0\t") {
		t.Errorf("the primary runs with Uid %q, want root", st["Uid"])
	}
	p.Install("v2")
	p.DeployOK(30 * time.Second)
	p.WaitServing(p.URL(), "v2", 10*time.Second)
	check("deployed")
	p.shutdownAll(p.PID)
}

// workerEnv reads the environment pid was started with.
func workerEnv(pid int) (map[string]string, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		return nil, false
	}
	env := map[string]string{}
	for _, kv := range strings.Split(string(b), "\x00") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	return env, true
}

// checkUserEnv fails the test unless every live worker of p has the
// variables of want with their values.
func checkUserEnv(t *testing.T, p *Primary, want map[string]string) {
	t.Helper()
	seen := 0
	for pid := range p.LiveWorkers() {
		env, ok := workerEnv(pid)
		if !ok {
			continue
		}
		seen++
		for k, v := range want {
			if env[k] != v {
				t.Errorf("worker %d: %s=%q, want %q", pid, k, env[k], v)
			}
		}
	}
	if seen == 0 {
		t.Error("no live worker to read the environment of")
	}
}

// freeID returns a number that is neither a uid nor a gid on this
// machine.
func freeID(t *testing.T) int {
	t.Helper()
	for id := 54321; id < 60000; id++ {
		s := strconv.Itoa(id)
		if _, err := user.LookupId(s); err == nil {
			continue
		}
		if _, err := user.LookupGroupId(s); err == nil {
			continue
		}
		return id
	}
	t.Skip("no free id")
	return 0
}

// TestUserNumericWithoutEntry: --user UID with no passwd entry runs the
// workers as that uid, with the gid of the same number and no
// supplementary group, and HOME=/, USER and LOGNAME the number; with
// UID:GID, that gid.
func TestUserNumericWithoutEntry(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	id := strconv.Itoa(freeID(t))
	for _, c := range []struct{ spec, gid string }{{id, id}, {id + ":65534", "65534"}} {
		p := StartPrimary(t, Options{Workers: 1, Flags: []string{"--user", c.spec}, Prepare: func(dir string) {
			openToAll(t, filepath.Dir(dir), dir, filepath.Join(dir, "tmp"))
		}})
		p.WaitServing(p.URL(), "v1", 20*time.Second)
		for pid := range p.LiveWorkers() {
			st, ok := readStatus(pid)
			if !ok {
				continue
			}
			if u, g := strings.Fields(st["Uid"]), strings.Fields(st["Gid"]); len(u) != 4 || u[0] != id || u[3] != id || len(g) != 4 || g[0] != c.gid || g[3] != c.gid {
				t.Errorf("--user %s: worker %d runs with Uid %q Gid %q, want %s and %s", c.spec, pid, st["Uid"], st["Gid"], id, c.gid)
			}
			if groups := strings.TrimSpace(st["Groups"]); groups != "" {
				t.Errorf("--user %s: worker %d has supplementary groups %q, want none", c.spec, pid, groups)
			}
		}
		checkUserEnv(t, p, map[string]string{"HOME": "/", "USER": id, "LOGNAME": id})
		p.shutdownAll(p.PID)
	}
}

// TestUserMistakes: an unknown user or group, and a primary that is not
// root asking for another user, each stop the start with one clear line
// and exit 1, before any worker runs.
func TestUserMistakes(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ user, want string }{
		{"no-such-user-h7", `--user no-such-user-h7: no such user "no-such-user-h7"`},
		{"nobody:no-such-group-h7", `--user nobody:no-such-group-h7: no such group "no-such-group-h7"`},
	} {
		p := StartPrimary(t, Options{NoWait: true, Flags: []string{"--user", c.user}})
		st := p.WaitExit(20 * time.Second)
		p.readersWG.Wait()
		if st == nil || st.ExitCode() != 1 {
			t.Errorf("--user %s: %v, want exit status 1", c.user, st)
		}
		if lines := p.Log.Lines(); len(lines) != 1 || !strings.HasPrefix(lines[0], "handoff: "+c.want) {
			t.Errorf("--user %s: stderr %q, want one line starting %q", c.user, lines, c.want)
		}
	}

	// A primary that is not root: as root, the test runs it as nobody;
	// otherwise as the test's own user.
	uid := strconv.Itoa(os.Geteuid())
	dir := t.TempDir()
	bin := filepath.Join(dir, "handoff")
	if err := copyFile(handoffBin, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "run", "--listen", "127.0.0.1:0", "--user", "root", "--", "/bin/true")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "TMPDIR="+dir)
	if os.Geteuid() == 0 {
		nobody, err := user.Lookup("nobody")
		if err != nil {
			testutil.Need(t, "no user nobody to run a primary as: %v", err)
		}
		uid = nobody.Uid
		n, _ := strconv.Atoi(nobody.Uid)
		g, _ := strconv.Atoi(nobody.Gid)
		openToAll(t, filepath.Dir(dir), dir)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(n), Gid: uint32(g), Groups: []uint32{}}}
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("a primary run as uid %s with --user root did not stop", uid)
	}
	want := "handoff: --user root: only root can run the workers as another user, and handoff runs as uid " + uid
	if cmd.ProcessState.ExitCode() != 1 || !strings.HasPrefix(stderr.String(), want) || strings.Count(stderr.String(), "\n") != 1 {
		t.Errorf("as uid %s, --user root: exit %d, stderr %q; want exit 1 and one line starting %q", uid, cmd.ProcessState.ExitCode(), stderr.String(), want)
	}
}
