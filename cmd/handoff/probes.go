package main

import (
	"errors"
	"flag"
	"fmt"
	"strings"
	"time"
)

// probeFlags are the flags of HTTP probes (--ready http:PATH, --health).
// An HTTP probe must reach one worker and no other, through that worker's
// own socket; every worker accepts from one shared socket here, so they
// are checked and then refused at start with what to use instead.
type probeFlags struct {
	host      string
	health    string
	interval  time.Duration
	timeout   time.Duration
	threshold int
}

func (p *probeFlags) define(fs *flag.FlagSet) {
	fs.StringVar(&p.host, "ready-host", "localhost", "")
	fs.StringVar(&p.health, "health", "", "")
	fs.DurationVar(&p.interval, "health-interval", 10*time.Second, "")
	fs.DurationVar(&p.timeout, "health-timeout", 2*time.Second, "")
	fs.IntVar(&p.threshold, "health-threshold", 3, "")
}

// check validates the health flags, and refuses --health.
func (p *probeFlags) check(fs *flag.FlagSet) error {
	switch {
	case p.interval <= 0:
		return fmt.Errorf("--health-interval %s: must be positive", p.interval)
	case p.timeout <= 0:
		return fmt.Errorf("--health-timeout %s: must be positive", p.timeout)
	case p.threshold < 1:
		return fmt.Errorf("--health-threshold %d: must be at least 1", p.threshold)
	case p.host == "":
		return errors.New("--ready-host: must not be empty")
	}
	if p.health == "" {
		for _, name := range []string{"health-interval", "health-timeout", "health-threshold"} {
			if flagSet(fs, name) {
				return fmt.Errorf("--%s without --health http:PATH: add --health http:/healthz, or drop it", name)
			}
		}
		return nil
	}
	return p.refuse("--health", p.health)
}

// refuse checks the form of an HTTP probe (http:PATH or https:PATH, PATH
// starting with /), then says why it cannot run here.
func (p *probeFlags) refuse(flagName, v string) error {
	scheme, path, _ := strings.Cut(v, ":")
	if (scheme != "http" && scheme != "https") || !strings.HasPrefix(path, "/") {
		return fmt.Errorf("%s %q: use http:PATH or https:PATH with PATH starting with /, e.g. http:/healthz", flagName, v)
	}
	return fmt.Errorf("%s %s needs a socket per worker, to probe each worker through its own, and this version does not probe through one yet: use --ready notify, bind or delay:DURATION", flagName, v)
}
