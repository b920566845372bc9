//go:build linux

package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A #! script is pinned by its interpreter and runs from its own path, so
// that what it finds next to itself is found after any rename over it:
// Python's sibling import (sys.path[0]), Node's require('./x') and a
// shell's $(dirname "$0"). Each app lives in release directories
// (DIR/releases/N, DIR/current -> releases/N, COMMAND DIR/current/ENTRY)
// and goes through: a byte-identical rename of its script, then a crash
// (kill -9) of a worker; a changed script renamed over it, then a crash
// (the replacement runs it, and the log says it is not the deployed one);
// a broken version renamed over it and deployed (refused, under load),
// then put back and a crash; a deploy of release 2 and `handoff rollback`
// to release 1 (under load), after a byte-identical rename of release 1's
// script; and a rollback refused while release 2's script is changed.
// Workers serve throughout, no replacement crash-loops, and no request
// fails under load.

// scriptApp is one interpreted app in a release directory.
type scriptApp struct {
	entry string            // the script COMMAND names
	flags []string          // further handoff flags
	files map[string]string // per release, "VERSION" in them replaced
	// comment is a line the language ignores, making a changed script
	// that behaves the same.
	comment string
	// broken replaces the entry: the version crashes at start.
	broken string
}

// pyServer is an HTTP server on fd 3 that says READY=1 and drains on
// SIGTERM; it answers "<version> pid=<pid> worker=<slot> gen=<generation>",
// the version being the Python expression version.
func pyServer(version string) string {
	return `
import os, signal, socket, threading
from http.server import HTTPServer, BaseHTTPRequestHandler

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    def answer(self):
        n = int(self.headers.get("Content-Length") or 0)
        if n:
            self.rfile.read(n)
        body = ("%s pid=%d worker=%s gen=%s\n" % (` + version + `, os.getpid(),
                os.environ["HANDOFF_WORKER"], os.environ["HANDOFF_GENERATION"])).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = answer
    def log_message(self, *args):
        pass

srv = HTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
srv.socket.close()
srv.socket = socket.socket(fileno=3)
srv.socket.setblocking(False)
signal.signal(signal.SIGTERM, lambda *a: threading.Thread(target=srv.shutdown).start())
n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
n.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
srv.serve_forever(poll_interval=0.05)
`
}

func pythonApp(t *testing.T) scriptApp {
	py := realProgram(t, "python3")
	return scriptApp{
		entry: "app.py",
		files: map[string]string{
			"app.py":    "#!" + py + "\nimport helper\n" + pyServer("helper.VERSION"),
			"helper.py": "VERSION = \"VERSION\"\n",
		},
		comment: "# changed\n",
		broken:  "#!" + py + "\nimport helper_gone\n",
	}
}

func nodeApp(t *testing.T) scriptApp {
	node := realProgram(t, "node")
	server := `#!` + node + `
'use strict';
const http = require('http');
const { version } = require('./x');
const server = http.createServer((req, res) => {
  req.resume();
  req.on('end', () => {
    res.setHeader('Connection', 'close');
    res.end(version + ' pid=' + process.pid + ' worker=' + process.env.HANDOFF_WORKER +
      ' gen=' + process.env.HANDOFF_GENERATION + '\n');
  });
});
server.listen({ fd: 3 }, () => process.send({ handoff: 'ready' }));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
`
	return scriptApp{
		entry:   "server.js",
		flags:   []string{"--ipc"},
		files:   map[string]string{"server.js": server, "x.js": "module.exports = { version: 'VERSION' };\n"},
		comment: "// changed\n",
		broken:  "#!" + node + "\nrequire('./gone');\n",
	}
}

func shApp(t *testing.T) scriptApp {
	py := realProgram(t, "python3")
	return scriptApp{
		entry: "start",
		files: map[string]string{
			"start":     "#!/bin/sh\n. \"$(dirname \"$0\")/env.sh\"\nexport VERSION\nexec " + py + " \"$(dirname \"$0\")/server.py\"\n",
			"env.sh":    "VERSION=VERSION\n",
			"server.py": pyServer("os.environ['VERSION']"),
		},
		comment: "# changed\n",
		broken:  "#!/bin/sh\n. \"$(dirname \"$0\")/gone.sh\"\n",
	}
}

// realProgram is the file name runs as (PATH and symlinks followed): not
// a version manager's shim.
func realProgram(t *testing.T, name string) string {
	t.Helper()
	path := needProgram(t, name)
	if name == "python3" {
		out, err := exec.Command(path, "-c", "import sys; print(sys.executable)").Output()
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		path = strings.TrimSpace(string(out))
	}
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		t.Fatal(err)
	}
	return real
}

// release writes release n of app under dir/releases/n.
func (a scriptApp) release(t *testing.T, dir string, n int) string {
	t.Helper()
	rel := filepath.Join(dir, "releases", fmt.Sprint(n))
	if err := os.MkdirAll(rel, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range a.files {
		writeBytes(t, filepath.Join(rel, name), []byte(strings.ReplaceAll(body, "VERSION", fmt.Sprintf("v%d", n))), 0o755)
	}
	return rel
}

// renameOver puts body at path by rename, as an editor or git does.
func renameOver(t *testing.T, path, body string) {
	t.Helper()
	tmp := path + ".tmp"
	writeBytes(t, tmp, []byte(body), 0o755)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// switchCurrent points DIR/current at release n, by rename.
func switchCurrent(t *testing.T, dir string, n int) {
	t.Helper()
	tmp := filepath.Join(dir, "current.tmp")
	os.Remove(tmp)
	if err := os.Symlink(filepath.Join("releases", fmt.Sprint(n)), tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "current")); err != nil {
		t.Fatal(err)
	}
}

func TestPinnedScriptPython(t *testing.T) { t.Parallel(); pinnedScript(t, pythonApp(t)) }
func TestPinnedScriptNode(t *testing.T)   { t.Parallel(); pinnedScript(t, nodeApp(t)) }
func TestPinnedScriptSh(t *testing.T)     { t.Parallel(); pinnedScript(t, shApp(t)) }

func pinnedScript(t *testing.T, app scriptApp) {
	var rel1 string
	p := StartPrimary(t, Options{
		Workers: 2,
		Command: "$DIR/current/" + app.entry,
		Flags:   append([]string{"--ready-timeout", "30s", "--drain-timeout", "10s"}, app.flags...),
		Prepare: func(dir string) {
			rel1 = app.release(t, dir, 1)
			switchCurrent(t, dir, 1)
		},
	})
	rel1, _ = filepath.EvalSymlinks(rel1)
	script := filepath.Join(rel1, app.entry)
	original, err := os.ReadFile(script)
	if err != nil {
		t.Fatal(err)
	}
	p.WaitServing(p.URL(), "v1", 20*time.Second)

	// What generation 1 pins: the interpreter, the script by its path.
	st := p.Status()
	if c := st.Generations.Current; c == nil || c.Path != script || !c.Script || c.Interpreter == nil ||
		!strings.Contains(c.Pinned, "the script runs from its path") {
		t.Errorf("status: current generation %+v, want the script %s with its interpreter pinned", c, script)
	}
	if r := p.CtlOK("status"); !strings.Contains(r.stdout, "script: interpreter "+st.Generations.Current.Interpreter.Path+" pinned") {
		t.Errorf("status:\n%s", r.stdout)
	}
	if e, ok := p.Log.Wait(0, 0, isMsg("command pinned")); !ok || !strings.HasPrefix(e.Str("pinned"), "script: interpreter ") {
		t.Errorf("no \"command pinned\" event naming the script's interpreter: %v", e)
	}

	victims := map[int]bool{}
	// crash kills one worker of generation gen and waits for its
	// replacement to serve; it returns the log's length before the kill.
	crash := func(gen int, what string) int {
		t.Helper()
		pid := p.workersOfGeneration(gen, 20*time.Second)[0]
		mark := p.Log.Len()
		victims[pid] = true
		if err := signalOurs(pid, syscall.SIGKILL, p.Mark, p.Dir); err != nil {
			t.Fatal(err)
		}
		if _, ok := p.Log.Wait(mark, 20*time.Second, isMsg("worker ready")); !ok {
			t.Fatalf("%s: no replacement ready\n%s", what, p.Tail(40))
		}
		p.workersOfGeneration(gen, 20*time.Second)
		p.WaitServing(p.URL(), "v1", 20*time.Second)
		return mark
	}
	changedEvents := func(from int) []Event {
		var out []Event
		for _, e := range p.Log.Events()[from:] {
			if e.Msg == "worker script changed" {
				out = append(out, e)
			}
		}
		return out
	}

	// 1. A byte-identical rename over the script (git checkout), a crash.
	renameOver(t, script, string(original))
	mark := crash(1, "byte-identical script")
	if ev := changedEvents(mark); len(ev) != 0 {
		t.Errorf("a byte-identical script logged as changed: %v", ev)
	}

	// 2. A changed script (it behaves the same), a crash: the replacement
	// runs it from its path, and the log says it is not the deployed one.
	renameOver(t, script, string(original)+app.comment)
	if c := p.Status().Generations.Current; c == nil || !strings.Contains(c.ScriptChanged, script+" is not the one deployed") {
		t.Errorf("status of a changed script: %+v", c)
	}
	if r := p.CtlOK("status"); !strings.Contains(r.stdout, "changed since its deploy: the script at "+script) {
		t.Errorf("status of a changed script:\n%s", r.stdout)
	}
	mark = crash(1, "changed script")
	if ev := changedEvents(mark); len(ev) != 1 || !strings.Contains(ev[0].Str("reason"), script+" is not the one deployed") ||
		ev[0].Int0("generation") != 1 {
		t.Errorf("a changed script: \"worker script changed\" events %v, want one naming %s", ev, script)
	}
	renameOver(t, script, string(original))
	if c := p.Status().Generations.Current; c == nil || c.ScriptChanged != "" {
		t.Errorf("status of the script put back: %+v", c)
	}

	// 3. A broken version renamed over the script and deployed: refused
	// under load; put back, and a crash restarts the deployed content.
	load := startLoad(t, p.URL())
	renameOver(t, script, app.broken)
	u := p.Deploy(60 * time.Second)
	if !u.Aborted() {
		t.Fatalf("the broken version: %s, want refused", u.End.Raw)
	}
	broken := u.Gen
	checkLoad(t, load, "v1")
	renameOver(t, script, string(original))
	mark = crash(1, "put back")
	if ev := changedEvents(mark); len(ev) != 0 {
		t.Errorf("the script put back logged as changed: %v", ev)
	}

	// 4. Release 2, deployed; release 1's script renamed over itself;
	// handoff rollback runs release 1 again, from its own directory.
	load = startLoad(t, p.URL())
	app.release(t, p.Dir, 2)
	switchCurrent(t, p.Dir, 2)
	if r := p.CtlOK("reload"); !strings.Contains(r.stdout, "done: generation ") {
		t.Errorf("reload of release 2: %s", r)
	}
	p.WaitServing(p.URL(), "v2", 20*time.Second)
	renameOver(t, script, string(original))
	if r := p.CtlOK("rollback"); !strings.Contains(r.stdout, "done: generation ") {
		t.Errorf("rollback: %s", r)
	}
	p.WaitServing(p.URL(), "v1", 20*time.Second)
	res := load.Stop()
	t.Logf("load through the deploy of release 2 and the rollback: %s", res)
	if res.Failures != 0 || res.Versions["v1"] == 0 || res.Versions["v2"] == 0 {
		t.Errorf("load: %d failed of %d, versions %v; want none failed, v1 and v2 served", res.Failures, res.Requests, res.Versions)
	}

	// 5. Release 2's script changed: a rollback to it would not run what
	// was deployed, and is refused.
	script2 := filepath.Join(filepath.Dir(rel1), "2", app.entry)
	body2, err := os.ReadFile(script2)
	if err != nil {
		t.Fatal(err)
	}
	renameOver(t, script2, string(body2)+app.comment)
	r := p.Ctl("rollback")
	if r.code != 1 {
		t.Errorf("rollback to a changed script: %s, want exit 1", r)
	}
	oneLine(t, "rollback to a changed script", r.stderr, "handoff: rollback refused: ", script2+" is not the one deployed")
	p.WaitServing(p.URL(), "v1", 10*time.Second)

	// No crash loop: every worker that exited was killed here, retired,
	// or the broken version's.
	gens := map[int]int{}
	for _, e := range p.Log.Filter("worker spawned") {
		gens[e.Int0("pid")] = e.Int0("generation")
	}
	for _, e := range p.Log.Filter("worker exited") {
		pid := e.Int0("pid")
		if victims[pid] || gens[pid] == broken || e.Str("stderr") == "" {
			continue
		}
		t.Errorf("a worker failed: %s", e.Raw)
	}
	if n := len(p.Log.Filter("worker spawned")); n > 2*p.Workers+8 {
		t.Errorf("%d workers spawned, want at most %d", n, 2*p.Workers+8)
	}
	for _, l := range p.Log.Lines() {
		for _, bad := range []string{"ModuleNotFoundError", "Cannot find module './x'", "env.sh: not found", "No such file"} {
			if strings.Contains(l, bad) && !strings.Contains(l, "gone") {
				t.Errorf("a worker failed to find its files: %s", l)
			}
		}
	}
	checkInvariant(t, p.Log.Events(), p.Workers)
}
