//go:build linux

package steer

import "testing"

// BenchmarkSetServing is the cost of one steering change on a group of 4
// members: a classic BPF program built and attached (random), or an eBPF
// program built, verified, loaded and attached (round-robin). Accepting
// costs nothing more: the program runs in the kernel, once per SYN.
func BenchmarkSetServing(b *testing.B) {
	for _, mode := range []Mode{Random, RoundRobin} {
		b.Run(mode.String(), func(b *testing.B) {
			g, ms := benchGroup(b, mode)
			sets := [][]*Member{ms[:2], ms[2:], {ms[0], ms[3]}}
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				if err := g.SetServing(sets[i%len(sets)]...); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkConnect is one connection made, accepted, answered and closed
// through a group of 4 members in each mode, one of them served by an
// acceptor and steered to (in Shared mode, the one socket): the steering
// program runs in the kernel once per SYN and adds nothing measurable.
// (With an acceptor on every member, the difference between modes is
// which of the process's acceptors the scheduler wakes, not the kernel's
// choice.)
func BenchmarkConnect(b *testing.B) {
	for _, mode := range []Mode{Shared, Random, RoundRobin} {
		b.Run(mode.String(), func(b *testing.B) {
			g, ms := benchGroup(b, mode)
			serve(b, ms[0])
			if err := g.SetServing(ms[0]); err != nil {
				b.Fatal(err)
			}
			addr := g.Addr()
			b.ResetTimer()
			for b.Loop() {
				if _, err := ask(addr, 0); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// benchGroup is a group of 4 members in mode.
func benchGroup(b *testing.B, mode Mode) (*Group, []*Member) {
	g, err := New("127.0.0.1:0", mode)
	if err != nil {
		b.Skip(err)
	}
	b.Cleanup(func() { g.CloseAll() })
	var ms []*Member
	for range 4 {
		m, err := g.Add()
		if err != nil {
			b.Fatal(err)
		}
		ms = append(ms, m)
	}
	return g, ms
}
