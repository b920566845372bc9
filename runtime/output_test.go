package runtime

import (
	"os"
	"strings"
	"testing"

	"github.com/handoff-dev/handoff/internal/testutil"
)

func TestWorkerOutputConfig(t *testing.T) {
	c := Config{Command: []string{"true"}, Listeners: []Listener{{Address: "127.0.0.1:0"}}, WorkerOutput: "labels"}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), `--worker-output "labels": use prefix, json or raw`) {
		t.Errorf("Validate: %v", err)
	}
	for _, m := range []OutputMode{"", OutputPrefix, OutputJSON, OutputRaw} {
		c.WorkerOutput = m
		if err := c.Validate(); err != nil {
			t.Errorf("%q: %v", m, err)
		}
	}
	// Nothing given: the primary's own stdout and stderr, prefixed.
	o := (&Config{}).workerOutput()
	if o.Stdout != os.Stdout || o.Stderr != os.Stderr || o.Mode != "" || len(o.Fields) != 1 || o.Fields[0].Key != "primary" {
		t.Errorf("default output %+v", o)
	}
	var buf testutil.SyncBuffer
	o = (&Config{WorkerOutput: OutputJSON, WorkerStderr: &buf}).workerOutput()
	if o.Stderr != &buf || o.Mode != OutputJSON {
		t.Errorf("output %+v", o)
	}
}
