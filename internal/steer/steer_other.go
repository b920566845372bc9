//go:build !linux

package steer

import (
	"context"
	"errors"
	"net"
	"os"
	"time"
)

var errLinux = errors.New("steer: SO_REUSEPORT groups need Linux")

// Group is a Linux SO_REUSEPORT group; elsewhere New and Import fail.
type Group struct {
	Settle time.Duration
}

// New fails: groups need Linux.
func New(addr string, mode Mode) (*Group, error) { return nil, errLinux }

// Import fails: groups need Linux.
func Import(files []*os.File, state []byte) (*Group, error) { return nil, errLinux }

// Detect reports Shared: groups need Linux.
func Detect() (Mode, string) { return Shared, errLinux.Error() }

func (g *Group) Mode() Mode                                 { return Shared }
func (g *Group) Addr() net.Addr                             { return nil }
func (g *Group) Add() (*Member, error)                      { return nil, errLinux }
func (g *Group) Members() []*Member                         { return nil }
func (g *Group) Serving() []*Member                         { return nil }
func (g *Group) SetServing(members ...*Member) error        { return errLinux }
func (g *Group) SetProbe(port uint16, m *Member) error      { return errLinux }
func (g *Group) ClearProbe(port uint16) error               { return errLinux }
func (g *Group) Queue(m *Member) (int, error)               { return 0, errLinux }
func (g *Group) Drain(ctx context.Context, m *Member) error { return errLinux }
func (g *Group) DrainSteered(ctx context.Context, m *Member, since time.Time) error {
	return errLinux
}
func (g *Group) Close(m *Member) error               { return errLinux }
func (g *Group) CloseAll() error                     { return nil }
func (g *Group) Release() error                      { return nil }
func (g *Group) Given(m *Member) (uint64, error)     { return 0, errLinux }
func (g *Group) Export() ([]*os.File, []byte, error) { return nil, nil, errLinux }
