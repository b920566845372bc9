package workerpool

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
)

// RSS returns the resident set size of process pid in bytes, as the kernel
// counts it (VmRSS in /proc/PID/status).
func RSS(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for _, line := range bytes.Split(b, []byte("\n")) {
		rest, ok := bytes.CutPrefix(line, []byte("VmRSS:"))
		if !ok {
			continue
		}
		f := bytes.Fields(rest)
		if len(f) != 2 || string(f[1]) != "kB" {
			break
		}
		kb, err := strconv.ParseInt(string(f[0]), 10, 64)
		if err != nil {
			break
		}
		return kb * 1024, nil
	}
	// A zombie or a kernel thread has no VmRSS line.
	return 0, fmt.Errorf("pid %d: no resident set size", pid)
}
