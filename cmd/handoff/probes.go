package main

import (
	"errors"
	"fmt"
	"time"

	httpprobe "github.com/handoff-dev/handoff/internal/probe"
	"github.com/handoff-dev/handoff/runtime"
)

// probeFlags are the flags of HTTP probes (--ready http:PATH, --health),
// which reach one worker and no other, through that worker's own socket.
// Their specs are in runFlags; their checks are here.
type probeFlags struct {
	host      string
	health    string
	ready     time.Duration
	interval  time.Duration
	timeout   time.Duration
	threshold int
}

// readyProbe parses --ready http:PATH (or https:PATH) into cfg.
func (p *probeFlags) readyProbe(v string, cfg *runtime.Config) error {
	s, err := httpprobe.Parse("--ready", v, p.host)
	if err != nil {
		return err
	}
	cfg.ReadyProbe = &s
	return nil
}

func (o *runOptions) checkReadyHost() error {
	switch {
	case o.probes.host == "":
		return errors.New("--ready-host: must not be empty")
	case o.given["ready-host"] && o.cfg.ReadyProbe == nil && o.probes.health == "":
		return errors.New("--ready-host without an HTTP probe: add --ready http:/healthz (or --health http:PATH), or drop it")
	}
	return nil
}

func (o *runOptions) checkReadyInterval() error {
	switch {
	case o.probes.ready <= 0:
		return fmt.Errorf("--ready-interval %s: must be positive, e.g. --ready-interval 200ms", o.probes.ready)
	case o.given["ready-interval"] && o.cfg.ReadyProbe == nil:
		return errors.New("--ready-interval without --ready http:PATH: add --ready http:/healthz, or drop it")
	}
	o.cfg.ReadyInterval = o.probes.ready
	return nil
}

// checkHealth reads --health, and refuses HTTP probes where workers share
// a socket.
func (o *runOptions) checkHealth() error {
	if o.probes.health != "" {
		s, err := httpprobe.Parse("--health", o.probes.health, o.probes.host)
		if err != nil {
			return err
		}
		o.cfg.Health = &s
	}
	return o.cfg.CheckProbes()
}

func (o *runOptions) checkHealthInterval() error {
	if err := positive("health-interval", o.probes.interval); err != nil {
		return err
	}
	if o.probes.health != "" {
		o.cfg.HealthInterval = o.probes.interval
	}
	return o.withoutHealth("health-interval")
}

func (o *runOptions) checkHealthTimeout() error {
	if err := positive("health-timeout", o.probes.timeout); err != nil {
		return err
	}
	if o.given["health-timeout"] && o.probes.health == "" && o.cfg.ReadyProbe == nil {
		return errors.New("--health-timeout without an HTTP probe: add --health http:/healthz, or drop it")
	}
	o.cfg.ProbeTimeout = o.probes.timeout
	return nil
}

func (o *runOptions) checkHealthThreshold() error {
	if o.probes.threshold < 1 {
		return fmt.Errorf("--health-threshold %d: must be at least 1", o.probes.threshold)
	}
	if o.probes.health != "" {
		o.cfg.HealthThreshold = o.probes.threshold
	}
	return o.withoutHealth("health-threshold")
}

// withoutHealth refuses the flag name, given without --health.
func (o *runOptions) withoutHealth(name string) error {
	if o.given[name] && o.probes.health == "" {
		return fmt.Errorf("--%s without --health http:PATH: add --health http:/healthz, or drop it", name)
	}
	return nil
}
