package runtime

import "testing"

func TestNegativeWorkersRefused(t *testing.T) {
	cfg := Config{Command: []string{"true"}, Listeners: []Listener{{Name: "l", Network: "tcp", Address: "127.0.0.1:0"}}, Workers: -1}
	cfg.setDefaults()
	if err := cfg.Validate(); err == nil {
		t.Fatal("Workers -1 accepted")
	}
}
