package workerpool

import "golang.org/x/sys/unix"

// pipeCloexec makes a pipe whose ends are closed on exec.
func pipeCloexec(p []int) error { return unix.Pipe2(p, unix.O_CLOEXEC) }
