//go:build linux

package runtime

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"strings"
	"syscall"
)

// workerCredential resolves Config.User (USER or USER:GROUP, names or
// numeric ids) into the credential the workers run with: USER's uid, GROUP's
// gid (USER's primary group when none is given) and USER's supplementary
// groups. A numeric uid with no entry in the user database is taken as it
// is: its gid is GROUP's, else the same number, and it has no
// supplementary groups. It returns nil when no switch is needed (no
// --user, or the primary's own user and group), and an error when the
// switch is impossible, so that the primary refuses to start rather than
// run the workers as itself.
//
// env is what the workers' environment gets instead of the primary's, as
// systemd's User= gives a service: HOME, USER, LOGNAME and SHELL from the
// user's entry; for a uid without one, HOME=/, USER and LOGNAME the
// number, and no SHELL (an empty value: removed).
func workerCredential(spec string) (cred *syscall.Credential, env []string, err error) {
	if spec == "" {
		return nil, nil, nil
	}
	name, group, hasGroup := strings.Cut(spec, ":")
	if name == "" || (hasGroup && group == "") {
		return nil, nil, fmt.Errorf("--user %q: give USER or USER:GROUP, e.g. --user www-data or --user www-data:www-data", spec)
	}
	u, known, err := lookupUser(name)
	if err != nil {
		return nil, nil, fmt.Errorf("--user %s: %v", spec, err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, nil, fmt.Errorf("--user %s: user %s has no numeric uid (%s)", spec, name, u.Uid)
	}
	gidStr := u.Gid
	if hasGroup {
		g, err := lookupGroup(group)
		if err != nil {
			return nil, nil, fmt.Errorf("--user %s: %v", spec, err)
		}
		gidStr = g.Gid
	}
	gid, err := strconv.ParseUint(gidStr, 10, 32)
	if err != nil {
		return nil, nil, fmt.Errorf("--user %s: group %s has no numeric gid", spec, gidStr)
	}
	if os.Geteuid() != 0 {
		if uint32(uid) == uint32(os.Geteuid()) && uint32(gid) == uint32(os.Getegid()) {
			return nil, nil, nil
		}
		return nil, nil, fmt.Errorf("--user %s: only root can run the workers as another user, and handoff runs as uid %d: start it as root (it binds the listeners, then the workers switch) or drop --user", spec, os.Geteuid())
	}
	cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	env = []string{"HOME=" + u.HomeDir, "USER=" + u.Username, "LOGNAME=" + u.Username, "SHELL=" + loginShell(u, known)}
	if !known {
		// No entry: no supplementary groups (an empty list, below).
		cred.Groups = []uint32{}
		return cred, env, nil
	}
	ids, err := u.GroupIds()
	if err != nil {
		return nil, nil, fmt.Errorf("--user %s: cannot list the groups of %s: %v", spec, name, err)
	}
	for _, s := range ids {
		if g, err := strconv.ParseUint(s, 10, 32); err == nil && uint32(g) != cred.Gid {
			cred.Groups = append(cred.Groups, uint32(g))
		}
	}
	// An empty list clears the supplementary groups (setgroups with none):
	// the workers must not keep root's.
	if cred.Groups == nil {
		cred.Groups = []uint32{}
	}
	return cred, env, nil
}

// lookupUser finds a user by name, or by numeric uid if no user has that
// name. A numeric uid that has no entry either is still a uid: known is
// false, and the user it returns has the uid's number for its name and
// group, and / for its home.
func lookupUser(name string) (u *user.User, known bool, err error) {
	u, err = user.Lookup(name)
	if err == nil {
		return u, true, nil
	}
	if _, nerr := strconv.ParseUint(name, 10, 32); nerr == nil {
		u, err := user.LookupId(name)
		if err == nil {
			return u, true, nil
		}
		if errors.As(err, new(user.UnknownUserIdError)) {
			return &user.User{Uid: name, Gid: name, Username: name, HomeDir: "/"}, false, nil
		}
	}
	var unknown user.UnknownUserError
	if errors.As(err, &unknown) {
		return nil, false, fmt.Errorf("no such user %q on this machine: create it (e.g. useradd --system %s) or name another", name, name)
	}
	return nil, false, fmt.Errorf("cannot look up user %q: %v", name, err)
}

// loginShell is u's login shell from /etc/passwd, "" when it has none
// there (os/user does not report it).
func loginShell(u *user.User, known bool) string {
	if !known {
		return ""
	}
	b, err := os.ReadFile("/etc/passwd")
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Split(line, ":")
		if len(f) == 7 && f[0] == u.Username && f[2] == u.Uid {
			return f[6]
		}
	}
	return ""
}

// lookupGroup finds a group by name, or by numeric gid.
func lookupGroup(name string) (*user.Group, error) {
	g, err := user.LookupGroup(name)
	if err == nil {
		return g, nil
	}
	if _, nerr := strconv.ParseUint(name, 10, 32); nerr == nil {
		if g, err := user.LookupGroupId(name); err == nil {
			return g, nil
		}
		// A gid without a name in /etc/group is still a gid.
		return &user.Group{Gid: name, Name: name}, nil
	}
	var unknown user.UnknownGroupError
	if errors.As(err, &unknown) {
		return nil, fmt.Errorf("no such group %q on this machine: create it (e.g. groupadd --system %s) or name another", name, name)
	}
	return nil, fmt.Errorf("cannot look up group %q: %v", name, err)
}

// replaceEnv returns env with each KEY=VALUE of set in place of env's
// KEY; a KEY= with no value removes KEY.
func replaceEnv(env, set []string) []string {
	if len(set) == 0 {
		return env
	}
	out := make([]string, 0, len(env)+len(set))
	keys := map[string]bool{}
	for _, kv := range set {
		k, _, _ := strings.Cut(kv, "=")
		keys[k] = true
	}
	for _, kv := range env {
		if k, _, _ := strings.Cut(kv, "="); !keys[k] {
			out = append(out, kv)
		}
	}
	for _, kv := range set {
		if _, v, _ := strings.Cut(kv, "="); v != "" {
			out = append(out, kv)
		}
	}
	return out
}
