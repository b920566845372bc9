package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/handoff-dev/handoff/runtime"
)

// --worker-output: json when the log is json, else prefix; any of the
// three can be asked for; anything else is one usage line.
func TestWorkerOutputFlag(t *testing.T) {
	for _, c := range []struct {
		args []string
		want runtime.OutputMode
	}{
		{nil, runtime.OutputPrefix},
		{[]string{"--log-format", "json"}, runtime.OutputJSON},
		{[]string{"--log-format", "console"}, runtime.OutputPrefix},
		{[]string{"--log-format", "json", "--worker-output", "raw"}, runtime.OutputRaw},
		{[]string{"--worker-output", "json"}, runtime.OutputJSON},
		{[]string{"--log-format", "json", "--worker-output", "prefix"}, runtime.OutputPrefix},
	} {
		cfg, _, err := parseRun(append(c.args, "--listen", ":0", "--", "true"), &bytes.Buffer{})
		if err != nil || cfg.WorkerOutput != c.want {
			t.Errorf("%q: %q, %v; want %q", c.args, cfg.WorkerOutput, err, c.want)
		}
		cfg, _, _, err = parseDev(append(c.args, "--listen", ":0", "--build", "true", "--", "true"), &bytes.Buffer{})
		if err != nil || cfg.WorkerOutput != c.want {
			t.Errorf("dev %q: %q, %v; want %q", c.args, cfg.WorkerOutput, err, c.want)
		}
	}
	code, stdout, stderr := runArgs("run", "--listen", "127.0.0.1:0", "--worker-output", "labels", "--", "true")
	if code != exitUsage || stdout != "" || stderr != "handoff: --worker-output \"labels\": use prefix, json or raw\n" {
		t.Errorf("bad mode: exit %d stdout %q stderr %q", code, stdout, stderr)
	}
	_, help, _ := runArgs("run", "--help")
	if !strings.Contains(help, "  --worker-output MODE") {
		t.Errorf("run --help does not name --worker-output")
	}
}
