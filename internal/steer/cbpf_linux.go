//go:build linux

package steer

import (
	"maps"
	"os"
	"slices"

	"golang.org/x/sys/unix"
)

// Classic BPF's ancillary offsets (linux/filter.h).
const (
	skfAdOff    = -0x1000
	skfAdRandom = 56
	skfNetOff   = -0x100000
	ipv4SrcPort = 20 // TCP source port past an IPv4 header without options
	ipv6SrcPort = 40 // and past an IPv6 header
)

func stmt(code uint16, k uint32) unix.SockFilter {
	return unix.SockFilter{Code: code, K: k}
}

func jeq(k uint32, jt, jf uint8) unix.SockFilter {
	return unix.SockFilter{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: jt, Jf: jf, K: k}
}

// neg is a negative (ancillary) offset as the instruction's k.
func neg(k int32) uint32 { return uint32(k) }

func ret(k int) unix.SockFilter { return stmt(unix.BPF_RET|unix.BPF_K, uint32(k)) }

// randomProgram returns, for a connection whose TCP source port has a
// probe rule, that rule's index; for any other, serving[random mod n].
// The indices are the group's order.
func randomProgram(serving []int, probes map[uint16]int) []unix.SockFilter {
	var p []unix.SockFilter
	if len(probes) > 0 {
		p = append(p,
			stmt(unix.BPF_LD|unix.BPF_B|unix.BPF_ABS, neg(skfNetOff)), // version nibble
			stmt(unix.BPF_ALU|unix.BPF_RSH|unix.BPF_K, 4),
			jeq(6, 0, 2),
			stmt(unix.BPF_LD|unix.BPF_H|unix.BPF_ABS, neg(skfNetOff+ipv6SrcPort)),
			stmt(unix.BPF_JMP|unix.BPF_JA, 1),
			stmt(unix.BPF_LD|unix.BPF_H|unix.BPF_ABS, neg(skfNetOff+ipv4SrcPort)),
		)
		for _, port := range slices.Sorted(maps.Keys(probes)) {
			p = append(p, jeq(uint32(port), 0, 1), ret(probes[port]))
		}
	}
	n := len(serving)
	if n == 0 {
		// No member serves yet (probes only): an index past the group's
		// sockets makes the kernel fall back to its hash, as with no
		// program.
		return append(p, stmt(unix.BPF_RET|unix.BPF_K, ^uint32(0)))
	}
	if n == 1 {
		return append(p, ret(serving[0]))
	}
	p = append(p,
		stmt(unix.BPF_LD|unix.BPF_W|unix.BPF_ABS, neg(skfAdOff+skfAdRandom)),
		stmt(unix.BPF_ALU|unix.BPF_MOD|unix.BPF_K, uint32(n)),
	)
	identity := true
	for i, idx := range serving {
		identity = identity && i == idx
	}
	if identity {
		return append(p, stmt(unix.BPF_RET|unix.BPF_A, 0))
	}
	for i, idx := range serving[:n-1] {
		p = append(p, jeq(uint32(i), 0, 1), ret(idx))
	}
	return append(p, ret(serving[n-1]))
}

// attachCBPF attaches prog to the group of the socket fd, replacing the
// group's program in one step.
func attachCBPF(fd int, prog []unix.SockFilter) error {
	fp := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	return os.NewSyscallError("setsockopt SO_ATTACH_REUSEPORT_CBPF",
		unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF, &fp))
}
