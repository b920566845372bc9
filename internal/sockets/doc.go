// Package sockets is the primary's socket layer: which listening sockets
// each worker slot accepts from, and which of them take new connections.
//
// With SO_REUSEPORT steering every TCP listener is a group
// (internal/steer) with a member socket per worker; a unix listener is
// one socket every worker shares. A Layer holds them, built listener by
// listener by the primary (NewLayer, then AddGroup, AddImported or
// AddShared), and is the pool's workerpool.Sockets; a Set is one
// worker's sockets, its workerpool.Socks. The package owns:
//
//   - the slot → member mapping: a new member of each group for a new
//     worker (New), the first members for the first worker, the previous
//     primary's members for the slots its workers still hold (Imported);
//   - steering: which members serve new connections (Serve), and where a
//     worker's HTTP probes go (ProbeTarget);
//   - draining a retiring worker's members (Set.Drain) and closing them
//     once no worker uses them (Close; a member still the only one served
//     waits for the next Serve, one of the previous primary's for OldGone);
//   - freezing for a hand-over: Export gives every group to tableflip's
//     files for a new primary and changes nothing after, Thaw undoes that
//     when the upgrade fails; ImportGroup takes a group over in the new
//     primary.
//
// Which listener is a group and in which mode (the configuration) is the
// runtime's: it binds the groups and hands them to the layer. The package
// imports internal/steer, workerpool (for the Sockets and Socks
// interfaces), golang.org/x/sys/unix (the memfd of a hand-over) and zap,
// never runtime.
//
// Everything but this comment is Linux only, as internal/steer's groups
// are (elsewhere it has only stubs).
package sockets
