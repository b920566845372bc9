package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/handoff-dev/handoff/reload"
)

// devWorkers is the pool size of the dev-loop benchmark.
const devWorkers = 2

// 4. Dev loop: an executable lands by rename (as a build does) and
// 'handoff run --watch' deploys it; measured until the new version answers
// on every worker.
func (b *bencher) devLoop(ctx context.Context) error {
	t := Table{
		Title:  "4. Dev loop: executable landed → new version answering on every worker",
		Header: []string{"workers", "reloads", "median", "p90", "max"},
	}
	out, _ := exec.CommandContext(ctx, b.cfg.Handoff, "run", "--help").CombinedOutput()
	if !strings.Contains(string(out), "--watch") {
		t.Notes = append(t.Notes, "Skipped: needs 'handoff run --watch', which this handoff does not have.")
		b.r.Tables = append(b.r.Tables, t)
		b.r.Verdicts = append(b.r.Verdicts, Verdict{Target: "dev loop: median at most 300 ms (debounce included)", Measured: "needs --watch", Skipped: true})
		b.progress("dev loop skipped: needs handoff run --watch")
		return nil
	}
	dir := filepath.Join(b.cfg.Dir, "devloop")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	app := filepath.Join(dir, "app")
	if err := b.landVersion(app, "r0"); err != nil {
		return err
	}
	p, addr, err := startPrimaryWith(ctx, b.cfg.Handoff, []string{"--watch"}, app, devWorkers)
	if err != nil {
		return err
	}
	defer p.stop()
	var took []time.Duration
	for k := 1; k <= b.cfg.Reloads; k++ {
		d, err := b.devReload(ctx, p, addr, app, k)
		if err != nil {
			return err
		}
		took = append(took, d)
		b.progress("reload %d: new version on every worker after %v", k, d)
		// Let the old workers go and the watch settle (cfg.Gap is well
		// above its debounce), so that reloads do not fold into one.
		if err := sleep(ctx, max(b.cfg.Gap, 4*reload.DefaultQuiet)); err != nil {
			return err
		}
	}
	med := medianDur(took)
	t.Rows = append(t.Rows, []string{fmt.Sprint(devWorkers), fmt.Sprint(len(took)), fmtDur(med), fmtDur(quantileDur(took, 0.9)), fmtDur(quantileDur(took, 1))})
	t.Notes = append(t.Notes, fmt.Sprintf("'handoff run --watch --ready notify': a new executable is written beside the old one and renamed over it, as go build does; the time runs from the rename to the primary's \"upgrade finished\" (every slot has a ready worker of the new version), the watch's debounce (%s) included; an answer of the new version is checked after each reload.", fmtDur(reload.DefaultQuiet)))
	b.r.Tables = append(b.r.Tables, t)
	b.r.Verdicts = append(b.r.Verdicts, Verdict{Target: "dev loop: median at most 300 ms (debounce included)", Measured: fmtDur(med), Met: med <= 300*time.Millisecond})
	return nil
}

// devReload lands version k of the app at app, as a build does (written
// beside it, renamed over it), and returns how long the deploy it started
// took, once an answer of the new version came from addr.
func (b *bencher) devReload(ctx context.Context, p *primary, addr, app string, k int) (time.Duration, error) {
	version := fmt.Sprintf("r%d", k)
	tmp := filepath.Join(filepath.Dir(app), ".app.tmp")
	if err := b.writeVersion(tmp, version); err != nil {
		return 0, err
	}
	from := p.next()
	start := time.Now()
	if err := os.Rename(tmp, app); err != nil {
		return 0, err
	}
	d, _, err := p.awaitDeploy(ctx, from, start)
	if err != nil {
		return 0, fmt.Errorf("reload %d: %w", k, err)
	}
	// Every slot has a worker of the new version now: check one answer.
	if err := waitAnswer(ctx, addr, 10*time.Second, func(s string) bool { return strings.HasPrefix(s, version+" ") }); err != nil {
		return 0, fmt.Errorf("reload %d: %w", k, err)
	}
	return d, nil
}

// landVersion puts a copy of the bench server answering version at path.
func (b *bencher) landVersion(path, version string) error {
	tmp := path + ".tmp"
	if err := b.writeVersion(tmp, version); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// writeVersion writes the bench server with a version trailer (see
// benchserver) to path, complete and executable.
func (b *bencher) writeVersion(path, version string) error {
	src, err := os.Open(b.cfg.Server)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o755)
	if err != nil {
		return err
	}
	_, err = io.Copy(dst, src)
	if err == nil {
		_, err = io.WriteString(dst, "\nBENCHVERSION="+version+"\n")
	}
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	return err
}
