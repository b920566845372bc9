//go:build !linux

package shim

import "os"

// Main returns at once: without Linux there is no primary to start this
// process as a worker's exec step. A process started with EnvMarker set
// anyway exits with ExitCannotExec rather than running as something else.
func Main() {
	path, ok := os.LookupEnv(EnvMarker)
	if !ok {
		return
	}
	cannotExec(path, "the exec step needs Linux")
	os.Exit(ExitCannotExec)
}
