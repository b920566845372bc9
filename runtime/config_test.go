package runtime

import "testing"

func TestNegativeWorkersRefused(t *testing.T) {
	cfg := Config{Command: []string{"true"}, Listeners: []Listener{{Name: "l", Network: "tcp", Address: "127.0.0.1:0"}}, Workers: -1}
	cfg.setDefaults()
	if err := cfg.Validate(); err == nil {
		t.Fatal("Workers -1 accepted")
	}
}

// Listeners from code get the CLI's default names and tcp, on a copy.
func TestListenerDefaults(t *testing.T) {
	given := []Listener{{Address: "127.0.0.1:0"}, {Name: "admin", Network: "unix", Address: "/tmp/a.sock"}}
	cfg := Config{Listeners: given}
	cfg.setDefaults()
	want := []Listener{{Name: "listener0", Network: "tcp", Address: "127.0.0.1:0"}, {Name: "admin", Network: "unix", Address: "/tmp/a.sock"}}
	for i := range want {
		if cfg.Listeners[i] != want[i] {
			t.Errorf("listener %d = %+v, want %+v", i, cfg.Listeners[i], want[i])
		}
	}
	if given[0].Name != "" || given[0].Network != "" {
		t.Errorf("the caller's listeners were changed: %+v", given[0])
	}
}
