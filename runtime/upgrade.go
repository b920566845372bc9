//go:build linux

package runtime

import (
	"os"
	"os/exec"
	"time"

	"go.uber.org/zap"

	"github.com/handoff-dev/handoff/internal/pin"
)

// A self-upgrade is two small machines, one in each primary, each a
// function that runs its phases in order: upgradeSelf in the old primary
// (upgrade_old.go: a deploy job of its loop), takeOver in the new one
// (upgrade_new.go: its Run). They talk over the hand-over socket
// (handover.go: the messages, named below as op{fields}); tableflip
// carries the listeners, the pins and the environment across, and tells
// each side of the other (Upgrade returns, Ready, WaitForParent). Below,
// for each phase: what it does and sends ("quoted": the log events), and
// what ends it, → the phase next.
//
// The old primary, upgradeSelf:
//
//  1. (WaitForParent) A primary that took over itself waits until its own
//     old primary has exited. Ends: it has → offerHandOver; ctx ends →
//     returns "the previous primary has not exited yet: ...".
//  2. offerHandOver: opens handover.sock in the private directory, exports
//     the generations' pins into tableflip's descriptors, sets
//     HANDOFF_HANDOVER and HANDOFF_HANDOVER_STATE (until upgradeSelf
//     returns), fixes the bound (upgradeBound, for the pool's size now).
//     Ends: → upgrade; the socket cannot be opened → returns why.
//  3. upgrade: the socket layer exported (sockets.Layer.Export, which
//     freezes it), then tableflip's Upgrade, which starts the new primary
//     and returns once that has called Ready (nil) or exited.
//     Two goroutines run meanwhile:
//     - accept: takes the new primary's connection (its own uid only),
//       sends state{generation, size, current, previous}, then its reader
//       answers retire{slot} with retired{slot} (Pool.HandOver; an error
//       once the bound has expired), step{i, N} into status, rollback with
//       Pool.RollBack ("rolling back a failed hand-over"; it asks
//       retire{slot} in turn) then rolledback; passNewer sends newer on a
//       deploy asked for meanwhile ("ending the new primary's probation:
//       ..."). Ends: the socket closes (settle); a connection made after
//       ctx ended is dropped; the reader ends with the connection
//       (handedOver, takeBack).
//     - guard: ends as Upgrade returns; or ctx ends (stopOnShutdown): TERM
//       to the connected new primary ("stopping the new primary"), and
//       tableflip's Stop, which kills it, if none is connected or it has
//       not exited 2×DrainTimeout+10s later ("the new primary did not exit
//       in time, killing it"); or the bound passes (killLateNewPrimary): no
//       slot is handed over from then on (expire) unless the new primary has
//       every slot, which then has upgradeSlack more to be ready; TERM
//       ("the new primary is not ready in time, stopping it"), SIGKILL if
//       it still runs stopGrace later ("..., killing it").
//     Ends: Upgrade returns → settle.
//  4. settle: waits for guard (Upgrade's error past the bound becomes
//     "not ready within BOUND: ..."), closes the socket, waits for accept.
//     Ends: → handedOver if Upgrade returned nil, else takeBack.
//  5. handedOver: MAINPID=new to systemd, sends mainpid, closes the
//     connection and waits for its reader. Ends: returns nil; the deploy
//     ends with errHandedOver, the job loop returns → retire.
//  6. takeBack: closes the connection and waits for its reader (and a
//     roll-back), steers its own sockets again, collects the pipes
//     tableflip dropped, Reclaims the slots the new primary had and did
//     not roll back ("reclaiming slots from the failed new primary").
//     Ends: returns Upgrade's error (a RolledBackError after a
//     roll-back); the loop serves on.
//  7. retire (retireAfterHandOver): "handed over"; the control socket
//     tells clients to retry there, --metrics stops; the queued jobs'
//     signals, then HUP, TTIN and TTOU as they come, are passed on
//     ("passed on to the new primary"), a TERM, INT or the end of ctx as
//     TERM ("stopping the new primary"); requests are answered
//     errHandedOver. Ends: the draining workers are gone (and, if
//     stopping, the new primary too, or 2×DrainTimeout+10s passed: "the
//     new primary did not exit in time") → "old primary exiting", Run
//     returns.
//
// The new primary, takeOver:
//
//  1. inherit: reads and clears HANDOFF_HANDOVER and
//     HANDOFF_HANDOVER_STATE, watches the old primary through tableflip's
//     pipe (watchOldPrimary). Ends: → hello; no socket named → returns
//     "started by an upgrade but no hand-over socket was given".
//  2. hello: dials the socket, sends hello{pid}, awaits state. Ends: state
//     → prepare; the dial fails, the connection ends or ctx ends →
//     prepare without a connection, from the environment's state, if the
//     old primary is gone within oldPrimaryGrace, else returns the error.
//  3. prepare: the generation, the command pinned, the old generations
//     imported, "taking over", the pool scaled to the old size. Ends: →
//     adopt; a failure → returns "upgrade aborted: ...", nothing taken.
//  4. adopt: every slot remote (Pool.Adopt), the old workers' sockets
//     steered to until replaced (closed once the old primary has exited:
//     sockets.Layer.OldGone), the spec. Ends: → roll.
//  5. roll, under signals (HUP, TTIN, TTOU and requests are queued for the
//     loop: "upgrade queued"): rollFrom, RollWith with the old primary
//     retiring each slot (sends retire{slot}, awaits retired{slot}) and
//     step{i, N} at each step; its probation ends early on newer or a
//     deploy asked of this primary. Ends: every slot its own → ready; the
//     old primary gone (its pipe closed: errOldPrimaryGone) → reclaimFrom,
//     every remote slot refilled at once ("old primary gone") → ready;
//     TERM, INT or ctx ends → abort ("shutdown asked for (SIG)"); a
//     failure → abort.
//  6. ready (readyAfterTakeOver): tableflip's Ready writes the pid file and
//     tells the old primary (its Upgrade returns). Ends: → serve; a
//     failure while the old primary lives → abort ("--pid-file ..."); with
//     it gone, the failure is ignored → serve.
//  7. abort: queued requests refused, "upgrade aborted"; with slots its
//     own and the old primary connected and alive, handBack: sends
//     rollback, awaits rolledback within (Size+1)×ReadyTimeout ("roll-back
//     incomplete"). Ends: after a stop, a graceful shutdown (returns nil);
//     else the workers drain and it returns "upgrade aborted: ...".
//  8. serve: owns the listeners and the generations; awaits mainpid (up to
//     mainPIDWait, or the connection's end); stops watching the old
//     primary; MAINPID and READY=1 to systemd; serves --metrics; "upgrade
//     finished", "primary ready"; closes the connection; serves the
//     control socket. Ends: → the job loop.

// Keys under which a primary hands its generations' pinned files to a new
// one: fixed, since tableflip keeps what it is given until it stops, and
// a later export under the same key replaces an earlier one.
const (
	pinKeyCurrent  = "handoff-pin-current"
	pinKeyPrevious = "handoff-pin-previous"
)

// exportGenerations hands the pinned files of the current and previous
// generations to tableflip, for a new primary (see importGeneration),
// replacing what an earlier export (or the old primary's) left under the
// same keys. A generation that cannot be handed over is left out: the new
// primary cannot roll back to it.
func (p *primary) exportGenerations() (cur, prev *generationToken) {
	if p.pinStore == nil {
		p.pinStore = &exportOnce{fds: p.upg.Fds, held: map[string]*os.File{}}
	}
	export := func(g *generation, key string) *generationToken {
		if g == nil || g.pin() == nil {
			return nil
		}
		t, err := g.pin().Export(p.pinStore, key)
		if err != nil {
			p.log.Warn("cannot hand over a generation", zap.Int("generation", g.gen), zap.Error(err))
			return nil
		}
		return &generationToken{Generation: g.gen, RollbackOf: g.rollbackOf, Pin: t}
	}
	return export(p.cur, pinKeyCurrent), export(p.prev, pinKeyPrevious)
}

// importGeneration takes over a generation of the old primary, its pinned
// file from tableflip's descriptors (nil if none was handed over, or it
// cannot be imported: a warning says why).
func (p *primary) importGeneration(t *generationToken) *generation {
	if t == nil {
		return nil
	}
	f, err := pin.Import(p.upg.Fds, t.Pin)
	if err != nil {
		p.log.Warn("cannot take over a generation", zap.Int("generation", t.Generation), zap.Error(err))
		return nil
	}
	p.pins.keep(f)
	spec := p.spec(t.Pin.Identity.Path, t.Generation)
	spec.Pin = f
	return &generation{gen: t.Generation, spec: spec, rollbackOf: t.RollbackOf}
}

// upgradeSlack is the part of a self-upgrade's bound that does not grow
// with the pool: the new primary's own start, and room to spare.
const upgradeSlack = time.Minute

// tableflipNever is tableflip's own upgrade bound, never reached:
// upgradeSelf enforces upgradeBound instead, which tableflip, fixing its
// bound once for every upgrade, cannot.
const tableflipNever = 100 * 365 * 24 * time.Hour

// upgradeBound is how long a self-upgrade may take, for a pool of size
// slots: the new primary calls Ready after rolling every slot, each new
// worker taking up to ready; one that fails drains its new worker and rolls
// back before it exits.
func upgradeBound(size int, ready, drain time.Duration) time.Duration {
	return time.Duration(size+1)*ready + 2*drain + upgradeSlack
}

// upgradeBound is the bound of a self-upgrade that starts now: for the
// pool as it is now, scaled or not, and with the new primary's probation
// (--min-uptime: its last worker's, and a roll-back's margin).
func (p *primary) upgradeBound() time.Duration {
	return upgradeBound(p.pool.Size(), p.cfg.ReadyTimeout, p.cfg.DrainTimeout) + 2*max(p.cfg.MinUptime, 0)
}

// selfChanged reports whether the executable tableflip would start now is
// another file than the one this primary runs.
//
// As PID 1 the primary never upgrades itself: its exit would end the pid
// namespace (the container) and every worker with it.
func (p *primary) selfChanged() bool {
	if os.Getpid() == 1 {
		return false
	}
	path, err := exec.LookPath(os.Args[0])
	if err != nil {
		return false
	}
	id, err := statID(path)
	return err == nil && id != p.selfID
}
