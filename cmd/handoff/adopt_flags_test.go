package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/handoff-dev/handoff/runtime"
)

func TestParseAdoptBind(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want runtime.AdoptMode
	}{
		{nil, runtime.AdoptAuto},
		{[]string{"--adopt-bind", "on"}, runtime.AdoptOn},
		{[]string{"--adopt-bind=off"}, runtime.AdoptOff},
		{[]string{"--adopt-bind", "auto"}, runtime.AdoptAuto},
	} {
		args := append(append([]string{"--listen", "127.0.0.1:0"}, tc.args...), "--", "true")
		cfg, _, err := parseRun(args, &bytes.Buffer{})
		if err != nil || cfg.AdoptBind != tc.want {
			t.Errorf("%q: %v, %v; want %v", tc.args, cfg.AdoptBind, err, tc.want)
		}
	}
	cfg, _, err := parseRun([]string{"--listen", "127.0.0.1:0", "--ready", "bind", "--", "true"}, &bytes.Buffer{})
	if err != nil || cfg.Ready != runtime.ReadyBind {
		t.Errorf("--ready bind: %v, %v", cfg.Ready, err)
	}
	code, stdout, stderr := runArgs("run", "--listen", "127.0.0.1:0", "--adopt-bind", "yes", "--", "true")
	if code != exitUsage || stdout != "" || stderr != "handoff: --adopt-bind \"yes\": use auto, on or off\n" {
		t.Errorf("--adopt-bind yes: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	_, help, _ := runArgs("run", "--help")
	for _, s := range []string{"  --adopt-bind MODE ", "no_new_privs", "PORT", "bind            it has bound"} {
		if !strings.Contains(help, s) {
			t.Errorf("handoff run --help does not mention %q", s)
		}
	}
}
