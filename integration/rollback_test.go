//go:build linux

package integration

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestControlRollbackAndGenerations: status (text and --json) names the
// current generation and the file it runs; a rollback with no previous
// generation is refused with one line and exit 1, logged, and changes
// nothing; after a reload the current generation is the new one.
func TestControlRollbackAndGenerations(t *testing.T) {
	t.Parallel()
	p := StartPrimary(t, Options{Workers: 1})
	server, err := filepath.EvalSymlinks(p.Server)
	if err != nil {
		t.Fatal(err)
	}

	r := p.CtlOK("status", "--json")
	var raw struct {
		Generations map[string]json.RawMessage `json:"generations"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &raw); err != nil {
		t.Fatal(err)
	}
	if string(raw.Generations["previous"]) != "null" || len(raw.Generations["current"]) == 0 {
		t.Errorf("status --json generations: %s", r.stdout)
	}
	st := p.Status()
	if c := st.Generations.Current; c == nil || c.Generation != 1 || c.Path != server || st.Generations.Previous != nil {
		t.Errorf("generations %+v, want current 1 at %s and no previous", st.Generations, server)
	}
	r = p.CtlOK("status")
	if !strings.Contains(r.stdout, "current  generation 1: "+server+"\n") || !strings.Contains(r.stdout, "previous none") {
		t.Errorf("status table:\n%s", r.stdout)
	}

	mark := p.Log.Len()
	r = p.Ctl("rollback")
	if r.code != 1 || r.stdout != "" {
		t.Errorf("rollback without a previous generation: %s, want exit 1", r)
	}
	oneLine(t, "rollback without a previous generation", r.stderr, "rollback refused: no previous generation to roll back to")
	if _, ok := p.Log.Wait(mark, 5*time.Second, isMsg("rollback refused")); !ok {
		t.Errorf("no \"rollback refused\" event\n%s", p.Tail(20))
	}
	if e, ok := p.Log.Wait(mark, time.Second, isMsg("control request")); !ok || e.Str("op") != "rollback" {
		t.Errorf("control request event: %v", e)
	}
	if n := len(p.Log.Filter("upgrade started")); n != 0 {
		t.Errorf("a refused rollback started %d upgrades", n)
	}
	p.WaitServing(p.URL(), "v1", 10*time.Second)

	p.Install("v2")
	r = p.CtlOK("reload")
	if !strings.Contains(r.stdout, "done: generation 2") {
		t.Errorf("reload: %s", r)
	}
	if c := p.Status().Generations.Current; c == nil || c.Generation != 2 || c.Path != server {
		t.Errorf("after the reload: current %+v", c)
	}
}
