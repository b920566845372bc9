// Command bench runs handoff's benchmarks (make bench) and prints the
// tables; with --doc it also writes them into the results section of a
// markdown file (docs/BENCHMARKS.md).
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/handoff-dev/handoff/internal/bench"
)

func main() {
	handoff := flag.String("handoff", "bin/handoff", "the handoff executable")
	server := flag.String("server", "bin/benchserver", "the bench server executable (internal/bench/benchserver)")
	hello := flag.String("hello", "", "examples/hello built, to compare handoff's library mode too (optional)")
	node := flag.String("node", "node", "the node executable, for the Node-cluster benchmark (looked up in PATH)")
	quick := flag.Bool("quick", false, "small sizes: about a minute instead of ten")
	doc := flag.String("doc", "", "markdown file whose results section is replaced by this run's (e.g. docs/BENCHMARKS.md)")
	out := flag.String("out", "", "file to write this run's results to as markdown")
	only := flag.String("only", "", "comma-separated benchmarks to run, of: "+strings.Join(bench.Names, ", ")+" (default: all)")
	command := flag.String("command", "", "the command to name in the results (default: this one)")
	flag.Parse()
	if flag.NArg() > 0 {
		fail(fmt.Errorf("unexpected argument %q: see bench --help", flag.Arg(0)))
	}
	cfg := bench.Full
	if *quick {
		cfg = bench.Quick
	}
	makeAbsolute(handoff, server, hello)
	if *only != "" {
		cfg.Only = onlyBenchmarks(*only)
	}
	cfg.Handoff, cfg.Server, cfg.Hello, cfg.Node = *handoff, *server, *hello, *node
	dir, err := os.MkdirTemp("", "handoff-bench-")
	if err != nil {
		fail(err)
	}
	defer os.RemoveAll(dir)
	cfg.Dir = dir
	cfg.Progress = os.Stderr
	if *command == "" {
		*command = strings.Join(os.Args, " ")
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := bench.Run(ctx, cfg)
	if err != nil {
		os.RemoveAll(dir)
		fail(err)
	}
	writeResults(rep, *command, *out, *doc)
}

// makeAbsolute makes each executable given (not "") an absolute path, and
// fails unless it exists.
func makeAbsolute(paths ...*string) {
	for _, p := range paths {
		if *p == "" {
			continue
		}
		abs, err := filepath.Abs(*p)
		if err != nil {
			fail(err)
		}
		if _, err := os.Stat(abs); err != nil {
			fail(fmt.Errorf("%s: build it first (make bench does)", abs))
		}
		*p = abs
	}
}

// onlyBenchmarks is the benchmarks of --only (a comma-separated list); it
// fails at a name that is not one.
func onlyBenchmarks(list string) []string {
	var names []string
	for _, name := range strings.Split(list, ",") {
		if !slices.Contains(bench.Names, name) {
			fail(fmt.Errorf("--only %s: no such benchmark; use %s", name, strings.Join(bench.Names, ", ")))
		}
		names = append(names, name)
	}
	return names
}

// writeResults prints rep, naming command, and writes it as markdown to
// out and into the results section of doc, those given.
func writeResults(rep *bench.Report, command, out, doc string) {
	rep.WriteText(os.Stdout, command)
	var md bytes.Buffer
	rep.WriteMarkdown(&md, command)
	if out != "" {
		if err := os.WriteFile(out, md.Bytes(), 0o644); err != nil {
			fail(err)
		}
	}
	if doc != "" {
		old, err := os.ReadFile(doc)
		if err != nil && !os.IsNotExist(err) {
			fail(err)
		}
		if err := os.WriteFile(doc, []byte(bench.ReplaceResults(string(old), md.String())), 0o644); err != nil {
			fail(err)
		}
		fmt.Fprintf(os.Stderr, "bench: results written to %s\n", doc)
	}
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "bench: %v\n", err)
	os.Exit(1)
}
