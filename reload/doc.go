// Package reload turns file changes into deploys: a Watcher reports a
// debounced change of watched executables, files and source trees (through
// fsnotify, on directories, so that a file replaced by rename stays
// watched), Complete tells whether an executable is whole enough to start,
// and a Builder with its BuildLoop runs a build command on every change to
// a source tree, cancelling a build that a newer change makes stale.
//
// The package knows nothing of the primary: runtime turns a Watcher's
// changes into deploy requests, and the CLI's `handoff dev` connects a
// BuildLoop to a primary.
package reload
