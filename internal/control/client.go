package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/handoff-dev/handoff/internal/unixsock"
)

// maxReplyLine bounds a reply line (a status of MaxSize workers fits).
const maxReplyLine = 4 << 20

// Call sends req to the primary at the control socket path and returns its
// reply. A reply that asks to retry (the primary handed over to a new one
// meanwhile, or had too many connections open to take this one) is
// retried until ctx ends. For a stop, Call returns once the
// primary has exited. The error of a primary that cannot be reached says
// why in one line; a refusal is a reply with OK false.
func Call(ctx context.Context, path string, req Request) (Reply, error) {
	for {
		rep, err := call(ctx, path, req)
		if err != nil || !rep.Retry {
			return rep, err
		}
		select {
		case <-ctx.Done():
			return rep, fmt.Errorf("%s: no answer in time (the last one: %s)", path, rep.Error)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func call(ctx context.Context, path string, req Request) (Reply, error) {
	var rep Reply
	c, err := dial(ctx, path)
	if err != nil {
		return rep, err
	}
	defer c.Close()
	stopWatch := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stopWatch()
	b, _ := json.Marshal(req)
	// A primary that refuses this user answers at once and hangs up,
	// maybe before the request is written: its answer is read anyway.
	_, werr := c.Write(append(b, '\n'))
	br := bufio.NewReader(io.LimitReader(c, maxReplyLine))
	line, err := br.ReadBytes('\n')
	if err != nil {
		if werr != nil {
			return rep, fmt.Errorf("%s: cannot send the request: %v", path, unwrapAll(werr))
		}
		if ctx.Err() != nil {
			return rep, fmt.Errorf("%s: no answer in time", path)
		}
		if len(line) == 0 {
			return rep, fmt.Errorf("%s: the primary closed the connection without answering", path)
		}
		return rep, fmt.Errorf("%s: incomplete answer: %v", path, unwrapAll(err))
	}
	if err := json.Unmarshal(line, &rep); err != nil {
		return rep, fmt.Errorf("%s: not a handoff control socket (bad answer)", path)
	}
	if req.Op == "stop" && rep.OK {
		// The primary keeps the connection open until it has exited.
		io.Copy(io.Discard, br)
		if ctx.Err() != nil {
			return rep, fmt.Errorf("%s: the primary (pid %d) is still stopping", path, rep.Pid)
		}
	}
	return rep, nil
}

func dial(ctx context.Context, path string) (*net.UnixConn, error) {
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf("%s: no such socket: is the primary running, and with this --control path?", path)
	case errors.Is(err, os.ErrPermission):
		return nil, fmt.Errorf("%s: permission denied: the control socket serves only its primary's user and root", path)
	case err != nil:
		return nil, fmt.Errorf("%s: %v", path, unwrapAll(err))
	case fi.Mode()&os.ModeSocket == 0:
		return nil, fmt.Errorf("%s: not a socket", path)
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	switch {
	case err == nil:
		uc := c.(*net.UnixConn)
		if err := checkServer(uc, path); err != nil {
			uc.Close()
			return nil, err
		}
		return uc, nil
	case errors.Is(err, syscall.ECONNREFUSED):
		return nil, fmt.Errorf("%s: no primary is listening (a socket left by one that died)", path)
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return nil, fmt.Errorf("%s: permission denied: the control socket serves only its primary's user and root", path)
	}
	return nil, fmt.Errorf("%s: %v", path, unwrapAll(err))
}

// checkServer makes sure that the process listening at the other end of
// c, the control socket at path, runs as this user or root, before its
// answer is believed: any user may have made a socket that a search, or
// a --control path in a directory others can write, leads to.
func checkServer(c *net.UnixConn, path string) error {
	uid, err := unixsock.PeerUID(c)
	if err != nil {
		return fmt.Errorf("%s: cannot tell who listens there: %v", path, unwrapAll(err))
	}
	if me := os.Geteuid(); uid != me && uid != 0 {
		return fmt.Errorf("%s: not trusted: the process listening there runs as uid %d, neither you (uid %d) nor root: it is someone else's socket; remove it, or give --control the right path", path, uid, me)
	}
	return nil
}

// Find returns the control socket of the one primary running
// with a default control path (see DefaultDir) that this user can
// reach. With none or several, the error says so and lists them. A
// directory that another user could have made or changed is not
// searched (see checkDir); the socket files of primaries that died
// are removed with their locks, without dialing them (see alive).
func Find() (string, error) {
	dirs := searchDirs()
	var live []string
	var distrust error
	for _, dir := range dirs {
		if err := checkDir(dir); err != nil {
			if !errors.Is(err, os.ErrNotExist) && distrust == nil {
				distrust = err
			}
			continue
		}
		paths, _ := filepath.Glob(filepath.Join(dir, "*.sock"))
		for _, path := range paths {
			if alive(path) && !slices.Contains(live, path) {
				live = append(live, path)
			}
		}
	}
	switch len(live) {
	case 1:
		return live[0], nil
	case 0:
		if distrust != nil {
			return "", fmt.Errorf("no running primary found: %v", distrust)
		}
		return "", fmt.Errorf("no running primary found in %s: start one with 'handoff run', or give --control PATH", strings.Join(dirs, ", "))
	}
	return "", fmt.Errorf("%d primaries are running: pick one with --control: %s", len(live), strings.Join(live, ", "))
}

// checkDir returns why dir, a directory the commands search for
// control sockets, cannot be trusted, or nil: it must be a directory, not
// a symbolic link, owned by this user or root, and writable by no one
// else (otherwise another user may have made it, or put a socket in it,
// to answer this user's commands). An error wrapping os.ErrNotExist is a
// directory that does not exist.
func checkDir(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	const advice = "remove it, or give --control PATH"
	me := os.Geteuid()
	switch {
	case fi.Mode()&os.ModeSymlink != 0:
		return fmt.Errorf("not trusting %s: it is a symbolic link (another user may have made it to catch your commands): %s", dir, advice)
	case !fi.IsDir():
		return fmt.Errorf("not trusting %s: it is not a directory: %s", dir, advice)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != uint32(me) && st.Uid != 0 {
		return fmt.Errorf("not trusting %s: it belongs to uid %d, neither you (uid %d) nor root (another user may have made it to catch your commands): %s", dir, st.Uid, me, advice)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("not trusting %s: others may write in it (mode %04o): %s", dir, fi.Mode().Perm(), advice)
	}
	return nil
}
