package runtime

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
)

// maxReplyLine bounds a reply line (a status of MaxSize workers fits).
const maxReplyLine = 4 << 20

// Call sends req to the primary at the control socket path and returns its
// reply. A reply that asks to retry (the primary handed over to a new one
// meanwhile) is retried until ctx ends. For a stop, Call returns once the
// primary has exited. The error of a primary that cannot be reached says
// why in one line; a refusal is a reply with OK false.
func Call(ctx context.Context, path string, req ControlRequest) (ControlReply, error) {
	for {
		rep, err := call(ctx, path, req)
		if err != nil || !rep.Retry {
			return rep, err
		}
		select {
		case <-ctx.Done():
			return rep, fmt.Errorf("%s: the primary handed over and the new one did not answer in time", path)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func call(ctx context.Context, path string, req ControlRequest) (ControlReply, error) {
	var rep ControlReply
	c, err := dialControl(ctx, path)
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

func dialControl(ctx context.Context, path string) (*net.UnixConn, error) {
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
		return c.(*net.UnixConn), nil
	case errors.Is(err, syscall.ECONNREFUSED):
		return nil, fmt.Errorf("%s: no primary is listening (a socket left by one that died)", path)
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return nil, fmt.Errorf("%s: permission denied: the control socket serves only its primary's user and root", path)
	}
	return nil, fmt.Errorf("%s: %v", path, unwrapAll(err))
}

// FindControl returns the control socket of the one primary running
// with a default control path (see DefaultControlDir) that this user can
// reach. With none or several, the error says so and lists them.
func FindControl() (string, error) {
	dirs := controlDirs()
	var live []string
	for _, dir := range dirs {
		paths, _ := filepath.Glob(filepath.Join(dir, "*.sock"))
		for _, path := range paths {
			c, err := net.DialTimeout("unix", path, time.Second)
			if err != nil {
				continue
			}
			c.Close()
			if !slices.Contains(live, path) {
				live = append(live, path)
			}
		}
	}
	switch len(live) {
	case 1:
		return live[0], nil
	case 0:
		return "", fmt.Errorf("no running primary found in %s: start one with 'handoff run', or give --control PATH", strings.Join(dirs, ", "))
	}
	return "", fmt.Errorf("%d primaries are running: pick one with --control: %s", len(live), strings.Join(live, ", "))
}
