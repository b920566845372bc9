//go:build linux

package steer

import "fmt"

// Detect reports the best mode this process can use and why, in one line:
// RoundRobin if it may load and attach the eBPF program, else Random if a
// SO_REUSEPORT group takes a classic BPF program, else Shared. It tries
// each on a throwaway group of two listeners on 127.0.0.1.
func Detect() (Mode, string) {
	rrErr := try(RoundRobin)
	if rrErr == nil {
		return RoundRobin, "eBPF SK_REUSEPORT programs load and attach: exact round-robin"
	}
	rndErr := try(Random)
	if rndErr == nil {
		return Random, fmt.Sprintf("random steering with classic BPF; no round-robin: %v", rrErr)
	}
	return Shared, fmt.Sprintf("one shared socket, no steering: %v", rndErr)
}

func try(mode Mode) error {
	g, err := New("127.0.0.1:0", mode)
	if err != nil {
		return err
	}
	defer g.CloseAll()
	a, err := g.Add()
	if err != nil {
		return err
	}
	if _, err := g.Add(); err != nil {
		return err
	}
	return g.SetServing(a)
}
