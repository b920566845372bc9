//go:build linux

package steer

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// rrState is RoundRobin's kernel side: the members by slot
// (REUSEPORT_SOCKARRAY), the turn counter and the connections given to
// each slot (array maps). The program is built anew for each change, with
// the serving slots and probe rules as constants, and attached in one
// setsockopt.
type rrState struct {
	socks   *ebpf.Map // slot → member socket
	turn    *ebpf.Map // [0]: connections steered so far
	given   *ebpf.Map // slot → connections given
	migrate bool      // attached as SELECT_OR_MIGRATE
}

func newRR() (*rrState, error) {
	socks, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.ReusePortSockArray, KeySize: 4, ValueSize: 8, MaxEntries: MaxMembers})
	if errors.Is(err, unix.EPERM) {
		// cilium/ebpf adds a guess about RLIMIT_MEMLOCK, which kernels
		// since 5.11 do not use: the cause is the missing capability.
		return nil, fmt.Errorf("steer: round-robin needs eBPF, which needs CAP_BPF or CAP_SYS_ADMIN: %w", unix.EPERM)
	}
	if err != nil {
		return nil, fmt.Errorf("steer: round-robin needs eBPF: %w", err)
	}
	turn, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		socks.Close()
		return nil, fmt.Errorf("steer: round-robin: %w", err)
	}
	given, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: MaxMembers})
	if err != nil {
		socks.Close()
		turn.Close()
		return nil, fmt.Errorf("steer: round-robin: %w", err)
	}
	rr := &rrState{socks: socks, turn: turn, given: given}
	if err := rr.probe(); err != nil {
		rr.close()
		return nil, err
	}
	return rr, nil
}

// probe finds the attach type the kernel takes: SELECT_OR_MIGRATE (5.14),
// so that a closed member's queue moves on, else SELECT.
func (rr *rrState) probe() error {
	rr.migrate = true
	p, err := rr.load([]int{0}, nil)
	if err != nil {
		rr.migrate = false
		if p, err = rr.load([]int{0}, nil); err != nil {
			return err
		}
	}
	return p.Close()
}

// files are duplicates of the maps' descriptors, for a hand-over: a socket
// can be in one REUSEPORT_SOCKARRAY only, so the new primary takes over
// these maps rather than making its own.
func (rr *rrState) files() ([]*os.File, error) {
	var fs []*os.File
	for _, m := range []*ebpf.Map{rr.socks, rr.turn, rr.given} {
		fd, err := unix.FcntlInt(uintptr(m.FD()), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			for _, f := range fs {
				f.Close()
			}
			return nil, os.NewSyscallError("fcntl", err)
		}
		fs = append(fs, os.NewFile(uintptr(fd), "steer:map"))
	}
	return fs, nil
}

// rrFiles is how many files rrState.files gives.
const rrFiles = 3

// importRR takes over the maps of files (from rrState.files; their
// descriptors are duplicated).
func importRR(files []*os.File) (*rrState, error) {
	var ms []*ebpf.Map
	fail := func(err error) (*rrState, error) {
		for _, m := range ms {
			m.Close()
		}
		return nil, fmt.Errorf("steer: round-robin: take over the maps: %w", err)
	}
	for _, f := range files {
		fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return fail(os.NewSyscallError("fcntl", err))
		}
		m, err := ebpf.NewMapFromFD(fd)
		if err != nil {
			unix.Close(fd)
			return fail(err)
		}
		ms = append(ms, m)
	}
	rr := &rrState{socks: ms[0], turn: ms[1], given: ms[2]}
	if rr.socks.Type() != ebpf.ReusePortSockArray || rr.turn.Type() != ebpf.Array || rr.given.Type() != ebpf.Array {
		return fail(errors.New("not the maps of a round-robin group"))
	}
	if err := rr.probe(); err != nil {
		return fail(err)
	}
	return rr, nil
}

// insert puts m's socket in the lowest slot that used lacks.
func (rr *rrState) insert(m *Member, used []int) error {
	slot := 0
	for slices.Contains(used, slot) {
		slot++
	}
	if err := rr.socks.Update(uint32(slot), uint64(m.Fd()), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("steer: round-robin: put %v in the socket map: %w", m, err)
	}
	if err := rr.given.Update(uint32(slot), uint64(0), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("steer: round-robin: %w", err)
	}
	m.slot = slot
	return nil
}

// forget empties a closed member's slot (the kernel has already taken the
// socket out of the map when it left the group).
func (rr *rrState) forget(slot int) {
	if err := rr.socks.Delete(uint32(slot)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		_ = err // nothing to undo: the slot is reused by the next Add
	}
}

func (rr *rrState) count(slot int) (uint64, error) {
	var n uint64
	err := rr.given.Lookup(uint32(slot), &n)
	return n, err
}

func (rr *rrState) close() error {
	return errors.Join(rr.socks.Close(), rr.turn.Close(), rr.given.Close())
}

// attach loads the program for the serving slots and probe rules (source
// port → slot) and attaches it to the group of the socket fd, replacing
// the group's program in one step.
func (rr *rrState) attach(fd int, serving []int, probes map[uint16]int) error {
	p, err := rr.load(serving, probes)
	if err != nil {
		return err
	}
	defer p.Close() // the group holds its own reference
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_EBPF, p.FD()); err != nil {
		return fmt.Errorf("steer: round-robin: attach the eBPF program: %w", os.NewSyscallError("setsockopt", err))
	}
	return nil
}

const (
	skPass  = 1
	keyOff  = -4  // stack: the turn counter's key
	slotOff = -8  // stack: the chosen slot
	portOff = -16 // stack: the TCP source port, as read from the packet
)

func (rr *rrState) load(serving []int, probes map[uint16]int) (*ebpf.Program, error) {
	at := ebpf.AttachSkReuseportSelect
	if rr.migrate {
		at = ebpf.AttachSkReuseportSelectOrMigrate
	}
	p, err := ebpf.NewProgramWithOptions(&ebpf.ProgramSpec{
		Type:         ebpf.SkReuseport,
		AttachType:   at,
		Instructions: rr.program(serving, probes),
		License:      "Dual MIT/GPL",
	}, ebpf.ProgramOptions{})
	if err != nil {
		return nil, fmt.Errorf("steer: round-robin: load the eBPF program: %w", err)
	}
	return p, nil
}

// program: a probe rule's source port selects its slot; any other
// connection takes the next turn, turn mod len(serving) picks the serving
// slot; the slot's count is bumped and its socket selected. When nothing
// can be selected (no turn counter, or an empty slot) the program passes
// and the kernel falls back to its hash. Its parts jump to one another by
// label: matchProbes to "turn" or "probed", takeTurn (at "turn") to
// "select" or "pass", and selectSlot has the rest.
func (rr *rrState) program(serving []int, probes map[uint16]int) asm.Instructions {
	if len(serving) == 0 && len(probes) == 0 {
		// Nothing to select: the kernel's hash for every connection.
		return asm.Instructions{asm.Mov.Imm(asm.R0, skPass), asm.Return()}
	}
	in := asm.Instructions{asm.Mov.Reg(asm.R6, asm.R1)} // R6: the context
	if len(probes) > 0 {
		in = append(in, matchProbes(probes)...)
	}
	in = append(in, rr.takeTurn(serving)...)
	return append(in, rr.selectSlot(len(serving) > 0, len(probes) > 0)...)
}

// matchProbes reads the connection's TCP source port and, if a probe rule
// has it, sets R7 to the rule's slot and jumps to "probed"; otherwise (or
// if the port cannot be read) it jumps to "turn".
func matchProbes(probes map[uint16]int) asm.Instructions {
	in := asm.Instructions{
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, 0), // the TCP header starts the data
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, portOff),
		asm.Mov.Imm(asm.R4, 2),
		asm.FnSkbLoadBytes.Call(),
		asm.JNE.Imm(asm.R0, 0, "turn"),
		asm.LoadMem(asm.R2, asm.RFP, portOff, asm.Half),
	}
	ports := slices.Sorted(maps.Keys(probes))
	var values []int32
	var targets []int
	for _, port := range ports {
		var be [2]byte // the port as the packet has it, read as a native u16
		binary.BigEndian.PutUint16(be[:], port)
		values = append(values, int32(binary.NativeEndian.Uint16(be[:])))
		targets = append(targets, probes[port])
	}
	return append(in, jumpTable(asm.R2, "probe", values, targets, "turn", "probed")...)
}

// takeTurn, at "turn", takes the next turn from the turn counter and sets
// R7 to the serving slot it picks (turn mod len(serving)), then jumps to
// "select"; with no serving slot, or no counter, it jumps to "pass".
func (rr *rrState) takeTurn(serving []int) asm.Instructions {
	if len(serving) == 0 {
		// No member serves yet (probes only): the kernel's hash.
		return asm.Instructions{asm.Ja.Label("pass").WithSymbol("turn")}
	}
	in := asm.Instructions{asm.StoreImm(asm.RFP, keyOff, 0, asm.Word).WithSymbol("turn")}
	in = append(in, bump(rr.turn, keyOff, "pass", fetchAdd(asm.R0, asm.R1))...) // R1: this connection's turn
	in = append(in, asm.Mod.Imm(asm.R1, int32(len(serving))))
	turns := make([]int32, len(serving))
	for i := range serving {
		turns[i] = int32(i)
	}
	return append(in, jumpTable(asm.R1, "serve", turns, serving, "pass", "select")...)
}

// selectSlot stores R7 as the slot, at "probed" for a probe's connection
// (if probed) and at "select" for a serving one (if serving, which also
// counts the connection as given), selects the slot's socket at "pick",
// and passes at "pass".
func (rr *rrState) selectSlot(serving, probed bool) asm.Instructions {
	var in asm.Instructions
	if probed {
		// A probe's connection is not counted as given.
		in = append(in,
			asm.StoreMem(asm.RFP, slotOff, asm.R7, asm.Word).WithSymbol("probed"),
			asm.Ja.Label("pick"))
	}
	if serving {
		in = append(in, asm.StoreMem(asm.RFP, slotOff, asm.R7, asm.Word).WithSymbol("select"))
		in = append(in, bump(rr.given, slotOff, "pick", asm.AddAtomic.Mem(asm.R0, asm.R1, asm.DWord, 0))...)
	}
	return append(in,
		asm.Mov.Reg(asm.R1, asm.R6).WithSymbol("pick"),
		asm.LoadMapPtr(asm.R2, rr.socks.FD()),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, slotOff),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnSkSelectReuseport.Call(),
		asm.Mov.Imm(asm.R0, skPass).WithSymbol("pass"),
		asm.Return(),
	)
}

// bump adds one to m's value at the key on the stack at off, with add (an
// atomic add of R1 to *R0), or jumps to missing if the key has no value.
func bump(m *ebpf.Map, off int16, missing string, add asm.Instruction) asm.Instructions {
	return asm.Instructions{
		asm.LoadMapPtr(asm.R1, m.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, int32(off)),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, missing),
		asm.Mov.Imm(asm.R1, 1),
		add,
	}
}

// jumpTable sets R7 to slots[i] and jumps to then when reg equals
// values[i], and jumps to otherwise when it equals none.
func jumpTable(reg asm.Register, name string, values []int32, slots []int, otherwise, then string) asm.Instructions {
	var in asm.Instructions
	for i, v := range values {
		in = append(in, asm.JEq.Imm(reg, v, fmt.Sprintf("%s%d", name, i)))
	}
	in = append(in, asm.Ja.Label(otherwise))
	for i, slot := range slots {
		in = append(in,
			asm.Mov.Imm(asm.R7, int32(slot)).WithSymbol(fmt.Sprintf("%s%d", name, i)),
			asm.Ja.Label(then))
	}
	return in
}

// fetchAdd is `src = atomic_fetch_add((u64 *)dst, src)`. Its immediate,
// BPF_ADD|BPF_FETCH, is set here: asm v0.22.0 encodes an atomic
// instruction's immediate from Constant as it was before Marshal derives
// it from the opcode, which would leave 0 (an add without fetch).
func fetchAdd(dst, src asm.Register) asm.Instruction {
	ins := asm.FetchAdd.Mem(dst, src, asm.DWord, 0)
	ins.Constant = int64(asm.FetchAdd >> 8)
	return ins
}
