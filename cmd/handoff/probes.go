package main

import (
	"errors"
	"flag"
	"fmt"
	"time"

	httpprobe "github.com/handoff-dev/handoff/internal/probe"
	"github.com/handoff-dev/handoff/runtime"
)

// probeFlags are the flags of HTTP probes (--ready http:PATH, --health),
// which reach one worker and no other, through that worker's own socket.
type probeFlags struct {
	host      string
	health    string
	ready     time.Duration
	interval  time.Duration
	timeout   time.Duration
	threshold int
}

func (p *probeFlags) define(fs *flag.FlagSet) {
	fs.StringVar(&p.host, "ready-host", "localhost", "")
	fs.DurationVar(&p.ready, "ready-interval", runtime.DefaultReadyInterval, "")
	fs.StringVar(&p.health, "health", "", "")
	fs.DurationVar(&p.interval, "health-interval", runtime.DefaultHealthInterval, "")
	fs.DurationVar(&p.timeout, "health-timeout", runtime.DefaultProbeTimeout, "")
	fs.IntVar(&p.threshold, "health-threshold", runtime.DefaultHealthThreshold, "")
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

// check validates the probe flags and sets cfg's.
func (p *probeFlags) check(fs *flag.FlagSet, cfg *runtime.Config) error {
	switch {
	case p.ready <= 0:
		return fmt.Errorf("--ready-interval %s: must be positive, e.g. --ready-interval 200ms", p.ready)
	case p.interval <= 0:
		return fmt.Errorf("--health-interval %s: must be positive", p.interval)
	case p.timeout <= 0:
		return fmt.Errorf("--health-timeout %s: must be positive", p.timeout)
	case p.threshold < 1:
		return fmt.Errorf("--health-threshold %d: must be at least 1", p.threshold)
	case p.host == "":
		return errors.New("--ready-host: must not be empty")
	}
	if flagSet(fs, "ready-host") && cfg.ReadyProbe == nil && p.health == "" {
		return errors.New("--ready-host without an HTTP probe: add --ready http:/healthz (or --health http:PATH), or drop it")
	}
	if flagSet(fs, "ready-interval") && cfg.ReadyProbe == nil {
		return errors.New("--ready-interval without --ready http:PATH: add --ready http:/healthz, or drop it")
	}
	cfg.ReadyInterval, cfg.ProbeTimeout = p.ready, p.timeout
	if p.health == "" {
		for _, name := range []string{"health-interval", "health-threshold"} {
			if flagSet(fs, name) {
				return fmt.Errorf("--%s without --health http:PATH: add --health http:/healthz, or drop it", name)
			}
		}
		if flagSet(fs, "health-timeout") && cfg.ReadyProbe == nil {
			return errors.New("--health-timeout without an HTTP probe: add --health http:/healthz, or drop it")
		}
		return cfg.CheckProbes()
	}
	s, err := httpprobe.Parse("--health", p.health, p.host)
	if err != nil {
		return err
	}
	cfg.Health, cfg.HealthInterval, cfg.HealthThreshold = &s, p.interval, p.threshold
	return cfg.CheckProbes()
}
