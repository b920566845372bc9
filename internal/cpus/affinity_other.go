//go:build !linux

package cpus

import "runtime"

// affinity is the number of CPUs the Go runtime sees: there is no cgroup
// quota to read here.
func affinity() int { return runtime.NumCPU() }
