# Attaché — build, test and demo entry points. `make help` lists the targets.
#
# Everything a target needs is installed by the target itself: Go tools are
# pinned below and built from the Go module proxy into $(TOOLS_DIR), one
# directory per name and version (a version bump installs afresh; an existing
# install is reused); test servers come from `make deps-test`.

SHELL       := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS   += --no-print-directory

GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo 0.0.0-dev)
# Providers cannot import internal/version; their mains carry their own var.
LDFLAGS := -X attache.dev/attache/internal/version.Version=$(VERSION) -X main.version=$(VERSION)

# ---- pinned tools -----------------------------------------------------------
TOOLS_DIR ?= $(HOME)/.cache/attache/tools

BUF_VERSION                := v1.75.0
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
STATICCHECK_VERSION        := v0.8.2

BUF                := $(TOOLS_DIR)/buf-$(BUF_VERSION)/buf
PROTOC_GEN_GO      := $(TOOLS_DIR)/protoc-gen-go-$(PROTOC_GEN_GO_VERSION)/protoc-gen-go
PROTOC_GEN_GO_GRPC := $(TOOLS_DIR)/protoc-gen-go-grpc-$(PROTOC_GEN_GO_GRPC_VERSION)/protoc-gen-go-grpc
STATICCHECK        := $(TOOLS_DIR)/staticcheck-$(STATICCHECK_VERSION)/staticcheck
TOOLS              := $(BUF) $(PROTOC_GEN_GO) $(PROTOC_GEN_GO_GRPC) $(STATICCHECK)

# PATH for recipes that run buf (it finds the protoc-gen-* plugins on PATH) and
# for `go test`, so the generated-code guard in internal/guards can run buf.
empty :=
space := $(empty) $(empty)
TOOLS_PATH := $(subst $(space),:,$(strip $(foreach t,$(TOOLS),$(patsubst %/,%,$(dir $(t))))))
WITH_TOOLS := env PATH="$(TOOLS_PATH):$$PATH"

# ---- what to build and test -------------------------------------------------
# Every directory holding a main package: cp, CLI, agent, installer, providers.
CMD_DIRS = $(patsubst %/,%,$(sort $(dir $(wildcard \
	controlplane/cmd/*/*.go agent/cmd/*/*.go installer/cmd/*/*.go providers/*/cmd/*/*.go examples/*/*.go))))

# Packages run under the race detector (the rest run without it: -race roughly
# doubles build and run time on 2 cores). Concurrency-heavy packages belong
# here; patterns that match nothing yet are dropped.
RACE_PKGS ?= ./agent/session/... ./agent/spool/... ./agent/executor/... ./agent/planrun/... ./agent/journal/... ./agent/catalog/... \
	./controlplane/agentapi/... ./controlplane/rollout/... ./controlplane/usage/... ./controlplane/metrics/... ./controlplane/billing/... ./agent/telemetry/... ./providers/postgres/migrate/... \
	./controlplane/server/... ./controlplane/audit/...
TEST_TIMEOUT ?= 20m
TEST_FLAGS   ?=
FUZZTIME     ?= 5s
BENCHTIME    ?= 1s
LOADGEN_AGENTS ?= 10000
# Plans the fleet benchmark submits, one per agent (its plans phase).
LOADGEN_PLANS  ?= 1000
# Plans the submit-to-applied latency benchmark (./bench) applies, one at a time.
BENCH_PLANS    ?= 200
# Packages whose benchmarks report a per-core figure (plan sign and verify):
# run with -cpu 1, so the garbage collector shares the one core.
PERCORE_BENCH_PKGS := ./internal/plan ./internal/planverify

# ---- targets ----------------------------------------------------------------
.PHONY: help
help: ## List the targets.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: tools
tools: $(TOOLS) ## Install the pinned Go tools (buf, protoc-gen-go[-grpc], staticcheck) into TOOLS_DIR.

$(BUF):
	GOBIN=$(@D) $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
$(PROTOC_GEN_GO):
	GOBIN=$(@D) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
$(PROTOC_GEN_GO_GRPC):
	GOBIN=$(@D) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
$(STATICCHECK):
	GOBIN=$(@D) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

.PHONY: build
build: ## Build every binary into bin/ with the version stamped in.
	@test -n "$(CMD_DIRS)" || { echo "build: no commands found" >&2; exit 1; }
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/ $(addprefix ./,$(CMD_DIRS))

.PHONY: generate
generate: $(BUF) $(PROTOC_GEN_GO) $(PROTOC_GEN_GO_GRPC) ## Lint the .proto files and regenerate protocol/gen.
	cd protocol && $(WITH_TOOLS) buf lint && $(WITH_TOOLS) buf generate --clean

.PHONY: check-generate
check-generate: generate ## Fail if the checked-in protocol/gen differs from what `make generate` produces.
	@if ! git diff --quiet -- protocol/gen; then \
		git diff --stat -- protocol/gen >&2; \
		echo "check-generate: protocol/gen is stale; run 'make generate' and commit the result" >&2; exit 1; \
	fi
	@untracked="$$(git ls-files --others --exclude-standard -- protocol/gen)"; \
	if [ -n "$$untracked" ]; then \
		echo "$$untracked" >&2; \
		echo "check-generate: untracked generated files in protocol/gen; commit them (or remove their .proto)" >&2; exit 1; \
	fi

.PHONY: lint
lint: $(BUF) $(STATICCHECK) ## gofmt, go vet, staticcheck and buf lint.
	@unformatted="$$(git ls-files --cached --others --exclude-standard -- '*.go' | xargs -r gofmt -l)"; \
	if [ -n "$$unformatted" ]; then echo "gofmt: these files need formatting:" >&2; echo "$$unformatted" >&2; exit 1; fi
	$(GO) vet ./...
	$(STATICCHECK) ./...
	cd protocol && $(BUF) lint

.PHONY: deps-test
deps-test: ## Install what the tests need on a fresh Debian machine (PostgreSQL); quiet when present.
	@scripts/deps-test.sh

.PHONY: test
test: deps-test tools ## Everything CI runs: check-generate, lint, go test (race on RACE_PKGS), fuzz pass.
	@$(MAKE) check-generate
	@$(MAKE) lint
	@$(MAKE) go-test
	@$(MAKE) fuzz

.PHONY: go-test
go-test: ## go test ./... (RACE_PKGS under -race), without the lint and generate checks.
	$(WITH_TOOLS) GO="$(GO)" TEST_TIMEOUT="$(TEST_TIMEOUT)" TEST_FLAGS="$(TEST_FLAGS)" \
		scripts/go-test.sh $(RACE_PKGS)

.PHONY: fuzz
fuzz: ## Run every Fuzz* target for FUZZTIME (default 5s) each.
	GO="$(GO)" FUZZTIME="$(FUZZTIME)" scripts/fuzz.sh

.PHONY: demo
demo: build ## Local end to end: control plane, two enrolled agents, signed plans (install, upgrade) applied, audit log.
	scripts/demo.sh

.PHONY: bench
bench: ## Run the Go benchmarks and print the figures (see docs/BENCHMARKS.md).
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) -count 1 -timeout 30m \
		$$($(GO) list ./... | grep -v -x $(addprefix -e attache.dev/attache/,bench $(PERCORE_BENCH_PKGS:./%=%)))
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) -count 1 -cpu 1 $(PERCORE_BENCH_PKGS)
	$(GO) test -run '^$$' -bench . -benchtime $(BENCH_PLANS)x -count 1 ./bench/
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/ ./controlplane/cmd/attache-controlplane
	$(GO) run ./bench/cmd/attache-loadgen --controlplane bin/attache-controlplane --agents $(LOADGEN_AGENTS) --plans $(LOADGEN_PLANS)

.PHONY: clean
clean: ## Remove bin/ and demo/ (not the tool cache).
	rm -rf bin demo
