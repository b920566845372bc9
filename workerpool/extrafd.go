//go:build linux

package workerpool

// ExtraFD is one more fd a worker inherits, after the listeners and the
// message channel, named in its environment: see OSLauncher.PrepareFD.
type ExtraFD struct {
	// FD is the primary's fd to pass.
	FD int
	// Env returns the environment entry that names the fd, which is
	// number n in the worker.
	Env func(n int) string
	// Started is called once the fork is over, with the worker's pid and
	// a func that marks the worker ready, or with 0 and nil when it did
	// not start; it owns FD from then on (and closes it).
	Started func(pid int, ready func())

	done bool
}

// prepareFD asks for a worker's extra fd, if the launcher gives one.
func (l *OSLauncher) prepareFD(slot, generation int, listeners []int) (*ExtraFD, error) {
	if l.PrepareFD == nil {
		return nil, nil
	}
	return l.PrepareFD(slot, generation, listeners)
}

// add passes the fd to the worker.
func (x *ExtraFD) add(files []uintptr, env []string) ([]uintptr, []string) {
	if x == nil {
		return files, env
	}
	return append(files, uintptr(x.FD)), append(env, x.Env(len(files)))
}

// forked reports the started worker.
func (x *ExtraFD) forked(pid int, ready func()) {
	if x != nil && !x.done {
		x.done = true
		x.Started(pid, ready)
	}
}

// release reports a worker that did not start, unless forked was called.
func (x *ExtraFD) release() { x.forked(0, nil) }
