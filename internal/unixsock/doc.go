// Package unixsock is what handoff needs of unix stream sockets on a file
// system and of the lock files beside them: who is at the other end of a
// connection (PeerCred, PeerUID, PeerPID), what is at a socket's path
// (Probe, RemoveStale), and an exclusive lock on a file that proves its
// holder alive (LockFile).
//
// It sits below runtime and internal/control, which both use it, and
// imports nothing of handoff.
package unixsock
