//go:build !linux || !(amd64 || arm64)

package adopt

import (
	"errors"
	"syscall"

	"go.uber.org/zap"
)

// Supported reports whether this build can adopt binds at all (Linux on
// amd64 or arm64); Probe says whether this system allows it.
const Supported = false

var errUnsupported = errors.New("bind adoption needs Linux on amd64 or arm64")

// Probe reports why binds cannot be adopted here.
func Probe() error { return errUnsupported }

// ProbeOptions says how the workers run, for ProbeWorker.
type ProbeOptions struct {
	Credential *syscall.Credential
	Env        []string
	Exe        string
}

// ProbeWorker reports why binds cannot be adopted here.
func ProbeWorker(o ProbeOptions) error { return errUnsupported }

// Worker is never called where binds cannot be adopted.
func Worker(sock int, tr Traps) (fatal bool, err error) { return false, errUnsupported }

// Supervisor cannot be made here.
type Supervisor struct{}

// NewSupervisor fails here.
func NewSupervisor(ls []Listener, log *zap.Logger) (*Supervisor, error) { return nil, errUnsupported }

// Prepare fails here.
func (s *Supervisor) Prepare() (*Pending, error) { return nil, errUnsupported }

// PrepareSlot fails here.
func (s *Supervisor) PrepareSlot(slot int) (*Pending, error) { return nil, errUnsupported }

// PrepareWith fails here.
func (s *Supervisor) PrepareWith(slot int, fds []int) (*Pending, error) { return nil, errUnsupported }

// Close does nothing.
func (s *Supervisor) Close() {}

// Pending is never made here.
type Pending struct{ FD int }

// Env is never used here.
func (p *Pending) Env(n int) string { return "" }

// Started does nothing.
func (p *Pending) Started(pid int, log *zap.Logger, adopted func()) {}
