// Package control is the primary's control plane: the unix socket through
// which `handoff status`, `reload`, `rollback`, `scale` and `stop` talk to
// a running primary.
//
// It owns
//   - the protocol: one JSON request line (Request, ParseRequest, at most
//     MaxLine bytes), one JSON reply line (Reply), and the status a reply
//     carries (Status and the types in it, which runtime re-exports);
//   - the client: Call, which believes only a server running as its user
//     or root, and Find, which looks for the one live primary in the
//     default directories (DefaultDir, EnvDir) that no other user could
//     have made or changed;
//   - the socket's path rules: DefaultPath, the default directory made
//     private (0700), the lock file beside the socket (PATH.lock) that
//     proves its primary alive, and the removal of a socket left by a
//     primary that died;
//   - the server (Linux): Listen (the socket inherited across a
//     self-upgrade through tableflip's files, see Fds, or bound anew), the
//     bound on connections, peer credentials, reading a request, replying,
//     the retry after a hand-over (Server.HandedOver) and Close.
//
// What a request does is the primary's: the server calls a Handler, which
// runtime implements. The package imports the standard library, zap,
// golang.org/x/sys/unix, workerpool (for the bound of a scale) and
// internal/unixsock, never runtime: runtime and cmd/handoff import it.
package control
