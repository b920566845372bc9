package cpus

import "golang.org/x/sys/unix"

// affinity counts the CPUs in the process's affinity mask.
func affinity() int {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return 0
	}
	return set.Count()
}
