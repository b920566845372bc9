package runtime

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/handoff-dev/handoff/internal/testutil"
)

// envTestNoPrimary, set to 1, makes this test binary, started again by
// TestNoPrimaryServesStandalone, a program in library mode on a platform
// with no primary (errNoPrimary set, as on macOS or FreeBSD). Only the
// test binary reads it (TestMain).
const envTestNoPrimary = "HANDOFF_TEST_NO_PRIMARY"

// noPrimaryApp is that program: Main with four workers asked for, JSON
// events on stderr. "/" answers with its pid and what the worker knows of
// itself; "/slow" answers only once the drain has begun.
func noPrimaryApp() int {
	errNoPrimary = errors.New("no primary in this test")
	log := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()),
		zapcore.Lock(os.Stderr), zapcore.DebugLevel))
	err := Main(context.Background(), App{
		Config: Config{
			Listeners: []Listener{{Name: "web", Network: "tcp", Address: "127.0.0.1:0"}},
			Workers:   4,
			Logger:    log,
		},
		Worker: func(ctx context.Context, w *Worker) error {
			mux := http.NewServeMux()
			mux.HandleFunc("/", func(rw http.ResponseWriter, r *http.Request) {
				fmt.Fprintf(rw, "pid=%d slot=%d generation=%d standalone=%v", os.Getpid(), w.Slot(), w.Generation(), w.Standalone())
			})
			mux.HandleFunc("/slow", func(rw http.ResponseWriter, r *http.Request) {
				log.Info("slow request")
				<-ctx.Done()
				time.Sleep(100 * time.Millisecond)
				fmt.Fprint(rw, "slow done")
			})
			return w.Serve(&http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}, nil)
		},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "noPrimaryApp:", err)
		return 1
	}
	return 0
}

// Where there is no primary, Main serves anyway, as one process on its
// listener, says so in one warning, and on TERM drains a request in
// flight and exits 0. The program is this test binary, with errNoPrimary
// set as it is on every platform but Linux: the same decision in Main.
func TestNoPrimaryServesStandalone(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envTestNoPrimary+"=1")
	var stderr testutil.SyncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		select {
		case <-exited:
		default:
			cmd.Process.Kill()
			<-exited
		}
	}()
	events := func() []map[string]any {
		var out []map[string]any
		sc := bufio.NewScanner(strings.NewReader(stderr.String()))
		for sc.Scan() {
			var ev map[string]any
			if json.Unmarshal(sc.Bytes(), &ev) == nil {
				out = append(out, ev)
			}
		}
		return out
	}
	waitEvent := func(msg string) map[string]any {
		t.Helper()
		for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
			for _, ev := range events() {
				if ev["msg"] == msg {
					return ev
				}
			}
			select {
			case err := <-exited:
				exited <- err
				t.Fatalf("the program exited (%v) before %q:\n%s", err, msg, stderr.String())
			default:
			}
		}
		t.Fatalf("no %q event in 10s:\n%s", msg, stderr.String())
		return nil
	}

	addr, _ := waitEvent("listening")["addr"].(string)
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	get := func(path string) (string, error) {
		resp, err := client.Get("http://" + addr + path)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return "", fmt.Errorf("%s: %s", resp.Status, b)
		}
		return string(b), err
	}
	body, err := get("/")
	if err != nil {
		t.Fatalf("GET /: %v\n%s", err, stderr.String())
	}
	if want := fmt.Sprintf("pid=%d slot=0 generation=0 standalone=true", cmd.Process.Pid); body != want {
		t.Errorf("GET / = %q, want %q: served by the program itself, standalone", body, want)
	}
	if kids := children(cmd.Process.Pid); len(kids) != 0 {
		t.Errorf("the program started processes %v: want none (Workers is 4, but there is no primary)", kids)
	}

	slow := make(chan string, 1)
	go func() {
		b, err := get("/slow")
		if err != nil {
			b = "error: " + err.Error()
		}
		slow <- b
	}()
	waitEvent("slow request")
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case b := <-slow:
		if b != "slow done" {
			t.Errorf("the request in flight at TERM: %q, want it answered", b)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the request in flight at TERM got no answer in 10s")
	}
	select {
	case err := <-exited:
		exited <- err
		if err != nil {
			t.Errorf("exit after TERM: %v, want 0\n%s", err, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("still running 10s after TERM:\n%s", stderr.String())
	}

	var warnings []map[string]any
	for _, ev := range events() {
		if ev["level"] == "warn" || ev["level"] == "error" {
			warnings = append(warnings, ev)
		}
	}
	if len(warnings) != 1 || warnings[0]["msg"] != "serving standalone" ||
		!strings.Contains(fmt.Sprint(warnings[0]["reason"]), "no primary in this test") {
		t.Errorf("want one warning, serving standalone with the reason; got %v\n%s", warnings, stderr.String())
	}
}

// children lists the pids whose parent is pid (none where there is no
// /proc).
func children(pid int) []int {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	var out []int
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces and parentheses.
		s := string(b)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fields) > 1 && fields[1] == strconv.Itoa(pid) {
			n, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			out = append(out, n)
		}
	}
	return out
}
