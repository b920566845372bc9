package control

import "time"

// The status of a primary, the answer to a status request: what `handoff
// status --json` prints. Field names are a contract. runtime re-exports
// these types under the same names (runtime.Status, ...).

// Status is what `handoff status --json` prints.
type Status struct {
	Primary PrimaryStatus  `json:"primary"`
	Workers []WorkerStatus `json:"workers"`
	// Upgrade is the deploy in progress, or null.
	Upgrade *UpgradeStatus `json:"upgrade"`
	// Generations are the files the primary keeps to deploy again.
	Generations GenerationsStatus `json:"generations"`
	// Balance is how new connections are spread over the workers:
	// "round-robin", "random" (each worker has a socket of its own that
	// the primary steers) or "shared" (every worker accepts from one
	// socket); BalanceReason says why that mode.
	Balance       string `json:"balance"`
	BalanceReason string `json:"balance_reason,omitempty"`
}

// GenerationsStatus is what the workers run now, and what `handoff
// rollback` would deploy.
type GenerationsStatus struct {
	// Current is the generation of the last start or deploy that
	// finished (null before the first workers are ready).
	Current *GenerationStatus `json:"current"`
	// Previous is the generation before it, kept pinned for a rollback;
	// null when there is none.
	Previous *GenerationStatus `json:"previous"`
}

// GenerationStatus is one generation and the executable it runs.
type GenerationStatus struct {
	Generation int `json:"generation"`
	// Path is the executable as the deploy resolved it (PATH lookup and
	// symlinks followed): what the workers run, even once another file
	// is at that path.
	Path string `json:"path"`
	// Size, ModTime and SHA256 (hex) identify the pinned file, as it was
	// when the deploy pinned it; absent when it is not pinned.
	Size    int64     `json:"size,omitempty"`
	ModTime time.Time `json:"mtime,omitzero"`
	SHA256  string    `json:"sha256,omitempty"`
	// RollbackOf is the generation whose file a rollback deployed again
	// as this one; absent otherwise.
	RollbackOf int `json:"rollback_of,omitempty"`
	// Pinned says in words what the generation pins: "binary pinned
	// (sha256 …)", or for a #! script "script: interpreter … pinned …;
	// the script runs from its path …".
	Pinned string `json:"pinned,omitempty"`
	// Script is true for a #! script; Interpreter is its pinned
	// interpreter (absent when it is not pinned).
	Script      bool        `json:"script,omitempty"`
	Interpreter *PinnedFile `json:"interpreter,omitempty"`
	// ScriptChanged, for a #! script, says how the script at its path
	// differs from the deployed one now (what a start would run).
	ScriptChanged string `json:"script_changed,omitempty"`
}

// PinnedFile is a file pinned beside a generation's command: a script's
// interpreter.
type PinnedFile struct {
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256,omitempty"`
}

// PrimaryStatus describes the primary that answered.
type PrimaryStatus struct {
	Pid int `json:"pid"`
	// Generation is the generation of the last deploy that finished (1
	// for the first workers).
	Generation int `json:"generation"`
	// Workers is the number of slots (what --workers or a scale set).
	Workers       int       `json:"workers"`
	Started       time.Time `json:"started"`
	UptimeSeconds float64   `json:"uptime_seconds"`
	Control       string    `json:"control"`
	Listeners     []string  `json:"listeners"`
	Command       []string  `json:"command"`
}

// WorkerStatus is one live worker process, draining ones included.
type WorkerStatus struct {
	Slot       int `json:"slot"`
	Pid        int `json:"pid"`
	Generation int `json:"generation"`
	// State is "starting", "ready" or "draining".
	State         string    `json:"state"`
	Started       time.Time `json:"started"`
	UptimeSeconds float64   `json:"uptime_seconds"`
	// Restarts counts the crash restarts of the slot.
	Restarts int `json:"restarts"`
	// RSSBytes is the resident set size; 0 if it could not be read.
	RSSBytes int64 `json:"rss_bytes"`
	// Queue is the number of connections waiting in the accept queue of
	// the worker's own socket(s); absent in shared mode, where workers
	// have none of their own.
	Queue *int `json:"queue,omitempty"`
	// Given counts the connections the round-robin program gave the
	// worker's socket(s) since they were made (a restarted worker's slot
	// keeps its socket, and the count); absent in other modes.
	Given *uint64 `json:"given,omitempty"`
	// Probe is the worker's last HTTP probe (--ready http:, --health);
	// absent without them.
	Probe *ProbeStatus `json:"probe,omitempty"`
}

// ProbeStatus is one HTTP probe of a worker, through its own socket.
type ProbeStatus struct {
	// Kind is "ready" (--ready http:) or "health" (--health).
	Kind string    `json:"kind"`
	At   time.Time `json:"at"`
	// OK: the answer was 2xx.
	OK bool `json:"ok"`
	// Result says what came back: "200 ok", "503 warming up",
	// "timeout after 2s", "connection refused".
	Result      string  `json:"result"`
	TookSeconds float64 `json:"took_seconds"`
	// Failures counts the health probes failed in a row (0 after a pass).
	Failures int `json:"failures,omitempty"`
}

// UpgradeStatus is a deploy in progress.
type UpgradeStatus struct {
	Generation int `json:"generation"`
	// Kind is "workers", "primary" (a self-upgrade) or "rollback"
	// (handoff rollback).
	Kind string `json:"kind"`
	// Step of Steps is the slot being replaced now (1-based); 0 before
	// the first step begins.
	Step           int       `json:"step"`
	Steps          int       `json:"steps"`
	Started        time.Time `json:"started"`
	ElapsedSeconds float64   `json:"elapsed_seconds"`
	// NewPrimary is the pid of the new primary of a self-upgrade.
	NewPrimary int `json:"new_primary,omitempty"`
	// RollingBack: the deploy failed and its workers are being rolled
	// back to the previous generation.
	RollingBack bool `json:"rolling_back,omitempty"`
}
