# handoff — see README.md.
GO       ?= go
BIN      ?= bin
ADDR     ?= 127.0.0.1:8080
WORKERS  ?= 2

.PHONY: all build run deploy hello hello-deploy deps soak bench test unit integration integration-race vet cross fmt-check clean fuzz

all: build

build:
	$(GO) build -o $(BIN)/handoff ./cmd/handoff

# Serve examples/wrapped-go under handoff on $(ADDR). Deploy a rebuilt
# example with: make deploy   (or kill -HUP $$(cat $(BIN)/handoff.pid))
run: build
	$(GO) build -ldflags "-X main.version=v1" -o $(BIN)/wrapped-go ./examples/wrapped-go
	@echo "serving on http://$(ADDR)/ — try: curl $(ADDR); make deploy; Ctrl-C stops"
	$(BIN)/handoff run --listen $(ADDR) --workers $(WORKERS) --ready notify \
		--pid-file $(BIN)/handoff.pid -- $(BIN)/wrapped-go

# Rebuild the example as a new version and deploy it into a running 'make run'.
deploy:
	$(GO) build -ldflags "-X main.version=$$(date +v%H%M%S)" -o $(BIN)/wrapped-go.new ./examples/wrapped-go
	mv $(BIN)/wrapped-go.new $(BIN)/wrapped-go
	kill -HUP $$(cat $(BIN)/handoff.pid)

# examples/hello, a program in library mode (its own primary), on $(ADDR).
# Deploy a rebuilt binary into it with: make hello-deploy
hello:
	$(GO) build -ldflags "-X main.version=v1" -o $(BIN)/hello ./examples/hello
	@echo "serving on http://$(ADDR)/ — try: curl $(ADDR); make hello-deploy; Ctrl-C stops"
	$(BIN)/hello --listen $(ADDR) --workers $(WORKERS) --pid-file $(BIN)/hello.pid

hello-deploy:
	$(GO) build -ldflags "-X main.version=$$(date +v%H%M%S)" -o $(BIN)/hello.new ./examples/hello
	mv $(BIN)/hello.new $(BIN)/hello
	kill -HUP $$(cat $(BIN)/hello.pid)

# Everything: vet, the other platforms' builds, formatting, unit tests
# under the race detector, then the end-to-end tests against real processes.
test: vet cross fmt-check unit integration

vet:
	$(GO) vet ./...

# Library mode builds on the platforms where the primary does not run (it
# serves standalone there): build and vet everything for each of them.
CROSS ?= darwin/arm64 darwin/amd64 freebsd/amd64
cross:
	@set -e; for p in $(CROSS); do \
		echo "go build && go vet: $$p"; \
		GOOS=$${p%/*} GOARCH=$${p#*/} $(GO) build ./...; \
		GOOS=$${p%/*} GOARCH=$${p#*/} $(GO) vet ./...; \
	done

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "not gofmt-formatted:"; echo "$$out"; exit 1; fi

# GOTESTFLAGS go to every go test below (.ci/run passes -v, to check the
# output for skipped tests).
GOTESTFLAGS ?=

unit: deps
	$(GO) test $(GOTESTFLAGS) -race -count=1 $$($(GO) list ./... | grep -v /integration)

# node and gunicorn, for the examples' end-to-end tests and the Node-cluster
# benchmark's smoke run in unit (installed with apt-get when missing).
deps:
	@.ci/deps

integration: deps
	$(GO) test $(GOTESTFLAGS) -count=1 -timeout 10m ./integration/...

# The end-to-end tests with every primary (handoff, the library-mode
# programs) built with -race: a test fails when one of its processes
# reports a data race. RUN='TestX|TestY' runs a subset.
integration-race: deps
	HANDOFF_TEST_RACE=1 $(GO) test $(GOTESTFLAGS) -count=1 -timeout 20m -run '$(RUN)' ./integration/...

clean:
	rm -rf $(BIN)

# First SOAK_REFUSED deploys of a handoff binary that exits at start: the
# primary's fds must stay flat. Then SOAK back-to-back deploys under load
# with handoff's defaults (--min-uptime 5s), a rebuilt handoff binary every
# 10th (a self-upgrade); fails on a single failed request, on a deploy
# whose new version is not the only one answering within
# HANDOFF_SOAK_TAKEOVER (1.5s) of its SIGHUP, and on the primary's fds
# growing over the second half. Prints a summary, written to $(BIN)/soak.md.
# About 6s a deploy. HANDOFF_SOAK_PRIMARY=1: every deploy a self-upgrade;
# HANDOFF_SOAK_LIB=1: examples/hello in library mode.
SOAK         ?= 1000
SOAK_REFUSED ?= 5
soak:
	HANDOFF_SOAK=$(SOAK) HANDOFF_SOAK_REFUSED=$(SOAK_REFUSED) HANDOFF_SOAK_PRIMARY=$(HANDOFF_SOAK_PRIMARY) HANDOFF_SOAK_LIB=$(HANDOFF_SOAK_LIB) \
		HANDOFF_SOAK_TAKEOVER=$(HANDOFF_SOAK_TAKEOVER) HANDOFF_SOAK_OUT=$(abspath $(BIN))/soak.md \
		$(GO) test -count=1 -timeout $$(( $(SOAK) * 20 + 900 ))s -run 'TestSoakRefusedUpgrades|TestSoakDeploys' -v ./integration/

# Benchmarks (not part of 'make test'; a smoke run of the harness is): what
# handoff costs and how deploys hold up, next to the same server run
# directly, restarted naively and upgraded by tableflip's README pattern.
# Prints the tables and writes them to $(BIN)/benchmarks.md. About 10 minutes
# on 2 cores; BENCH_QUICK=1 for small sizes (under a minute); BENCH_DOC=1
# to also put the results into docs/BENCHMARKS.md; BENCH_ONLY=devloop,balance
# runs only those (of overhead, disruption, scaling, devloop, balance, output,
# adoption, cluster). The cluster benchmark runs node (from PATH) too.
BENCH_QUICK ?=
BENCH_DOC   ?=
BENCH_ONLY  ?=
bench:
	$(GO) build -o $(BIN)/handoff ./cmd/handoff
	$(GO) build -o $(BIN)/benchserver ./internal/bench/benchserver
	$(GO) build -o $(BIN)/hello-bench ./examples/hello
	$(GO) build -o $(BIN)/bench ./internal/bench/cmd/bench
	$(BIN)/bench --handoff $(BIN)/handoff --server $(BIN)/benchserver --hello $(BIN)/hello-bench $(if $(BENCH_QUICK),--quick) \
		--out $(BIN)/benchmarks.md $(if $(BENCH_DOC),--doc docs/BENCHMARKS.md) \
		$(if $(BENCH_ONLY),--only $(BENCH_ONLY)) --command "make bench$(if $(BENCH_QUICK), BENCH_QUICK=1)$(if $(BENCH_ONLY), BENCH_ONLY=$(BENCH_ONLY))"

# Fuzz the control socket's request decoder (its seeds run in 'make test').
FUZZTIME ?= 60s
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzParseRequest -fuzztime $(FUZZTIME) ./internal/control/
