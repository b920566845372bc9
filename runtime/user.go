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
// groups. It returns nil when no switch is needed (no --user, or the
// primary's own user and group), and an error when the switch is
// impossible, so that the primary refuses to start rather than run the
// workers as itself.
func workerCredential(spec string) (*syscall.Credential, error) {
	if spec == "" {
		return nil, nil
	}
	name, group, hasGroup := strings.Cut(spec, ":")
	if name == "" || (hasGroup && group == "") {
		return nil, fmt.Errorf("--user %q: give USER or USER:GROUP, e.g. --user www-data or --user www-data:www-data", spec)
	}
	u, err := lookupUser(name)
	if err != nil {
		return nil, fmt.Errorf("--user %s: %v", spec, err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("--user %s: user %s has no numeric uid (%s)", spec, name, u.Uid)
	}
	gidStr := u.Gid
	if hasGroup {
		g, err := lookupGroup(group)
		if err != nil {
			return nil, fmt.Errorf("--user %s: %v", spec, err)
		}
		gidStr = g.Gid
	}
	gid, err := strconv.ParseUint(gidStr, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("--user %s: group %s has no numeric gid", spec, gidStr)
	}
	if os.Geteuid() != 0 {
		if uint32(uid) == uint32(os.Geteuid()) && uint32(gid) == uint32(os.Getegid()) {
			return nil, nil
		}
		return nil, fmt.Errorf("--user %s: only root can run the workers as another user, and handoff runs as uid %d: start it as root (it binds the listeners, then the workers switch) or drop --user", spec, os.Geteuid())
	}
	cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	ids, err := u.GroupIds()
	if err != nil {
		return nil, fmt.Errorf("--user %s: cannot list the groups of %s: %v", spec, name, err)
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
	return cred, nil
}

// lookupUser finds a user by name, or by numeric uid if no user has that
// name.
func lookupUser(name string) (*user.User, error) {
	u, err := user.Lookup(name)
	if err == nil {
		return u, nil
	}
	if _, nerr := strconv.ParseUint(name, 10, 32); nerr == nil {
		if u, err := user.LookupId(name); err == nil {
			return u, nil
		}
	}
	var unknown user.UnknownUserError
	if errors.As(err, &unknown) {
		return nil, fmt.Errorf("no such user %q on this machine: create it (e.g. useradd --system %s) or name another", name, name)
	}
	return nil, fmt.Errorf("cannot look up user %q: %v", name, err)
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
