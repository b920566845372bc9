package runtime

import "fmt"

// AdoptMode says whether a worker that binds a listener's address itself
// gets the primary's socket (Config.AdoptBind, the CLI's --adopt-bind).
type AdoptMode int

const (
	// AdoptOff: the workers' binds run untouched, so a worker must take
	// its sockets from LISTEN_FDS. The zero value: library mode's
	// default, whose workers take Worker.Listener.
	AdoptOff AdoptMode = iota
	// AdoptAuto: adopt where the kernel and the seccomp policy allow it,
	// else off, with one "bind adoption off" info line that says why. The
	// CLI's default.
	AdoptAuto
	// AdoptOn: adopt; a start-up error where it cannot work.
	AdoptOn
)

// ParseAdoptMode reads auto, on or off.
func ParseAdoptMode(s string) (AdoptMode, error) {
	switch s {
	case "auto":
		return AdoptAuto, nil
	case "on":
		return AdoptOn, nil
	case "off":
		return AdoptOff, nil
	}
	return AdoptOff, fmt.Errorf("--adopt-bind %q: use auto, on or off", s)
}

func (m AdoptMode) String() string {
	switch m {
	case AdoptAuto:
		return "auto"
	case AdoptOn:
		return "on"
	}
	return "off"
}
