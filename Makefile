# Two commands matter: `make demo` runs the demo, `make test` runs every check CI runs.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c

CARGO ?= cargo
# How many put/update/delete cycles the demo writes before it stops by itself; empty (the
# default) runs until Ctrl-C.
ITERATIONS ?=
# Where the demo's DynamoDB Local keeps its data, so a second run resumes after the
# checkpoint (git-ignored).
DEMO_DATA := $(CURDIR)/.demo-data
# The cargo test output, kept for the summary line at the end of `make test`.
TEST_LOG := target/make-test.log
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
# What `make demo` builds: every program of the workspace, with the feature set of the test
# build. Cargo unifies a dependency's features over the packages and targets of one command,
# so `-p dynamodb-streams-examples --bin quickstart` alone would build tokio, serde and the AWS SDK a second
# time without the features the tests add (tokio's test-util, ...: 55 crates, 5 minutes
# after a full `make test`). `--workspace` plus `--examples` (which need the
# dev-dependencies) resolves exactly as `cargo test --workspace --all-targets` does, and the
# dev and test profiles agree (Cargo.toml), so either command reuses the other's build.
PROGRAMS := --workspace --bins --examples

.PHONY: test demo fmt lint doc dynamodb-local

## test: every test (against a DynamoDB Local started for the run), the doctests (the README's
## example included), then fmt, clippy and warning-free docs
test:
	scripts/dynamodb-local.sh install
	scripts/browser.sh install
	mkdir -p $(dir $(TEST_LOG))
	scripts/dynamodb-local.sh run -- $(CARGO) test --workspace --all-targets 2>&1 | tee $(TEST_LOG)
	# `--all-targets` leaves doctests out; they need no DynamoDB.
	$(CARGO) test --workspace --doc 2>&1 | tee -a $(TEST_LOG)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(MAKE) --no-print-directory module-graph
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --workspace
	$(MAKE) --no-print-directory package public-api CARGO="$(CARGO)"
	@awk '/^test result:/ { passed += $$4; failed += $$6 } \
	     END { print "tests: " passed " passed, " failed " failed" }' $(TEST_LOG)

## demo: write to the table `stream-me` and print its change stream (Ctrl-C stops; ITERATIONS=N stops after N cycles)
demo:
	$(CARGO) build $(PROGRAMS)
	scripts/dynamodb-local.sh run --db-path "$(DEMO_DATA)" -- \
		$(TARGET_DIR)/debug/quickstart $(if $(strip $(ITERATIONS)),--iterations $(strip $(ITERATIONS)))

## figures: failover figures with real jsonl-worker processes against DynamoDB Local (release
## build, default settings): takeover after SIGKILL of a shard owner, gap after a SIGTERM
## handoff, duplicates; FIGURES_ARGS adds options, e.g. `make figures FIGURES_ARGS="--runs 5"`.
.PHONY: figures
FIGURES_ARGS ?=
figures:
	$(CARGO) build --release -p dynamodb-streams-examples --bin jsonl-worker --bin failover-figures
	scripts/dynamodb-local.sh run -- $(CARGO) run --release --quiet -p dynamodb-streams-examples --bin failover-figures -- $(FIGURES_ARGS)

## package: what `cargo publish` would upload, packaged offline for every publishable crate in
## dependency order (`cargo package --workspace`, which resolves the workspace's crates against
## each other without the registry), then the packaged sources unpacked into a workspace of
## their own and `cargo check`ed offline (scripts/package-check.sh says why this and not
## cargo's own verification, which would build the whole AWS SDK again for every crate);
## `ddbsc` is checked to need no example code.
.PHONY: package
UNPUBLISHED := dynamodb-streams-integration-tests public-api-check
package:
	CARGO="$(CARGO)" scripts/package-check.sh $(foreach p,$(UNPUBLISHED),--exclude $(p))
	@if $(CARGO) tree --offline -p ddbsc -e normal,build --prefix none | grep -q '^dynamodb-streams-examples '; then \
		echo "ddbsc depends on the examples package: cargo install ddbsc would build example code"; exit 1; fi

## public-api: the library crates' public API compared with its snapshot
## (CRATE/public-api.txt): a removed or changed item fails, naming it. From rustdoc's JSON
## (`--workspace --lib`: the test build's feature set, so no dependency is checked again).
## public-api-update: records the current API as the snapshot (after an intended change).
.PHONY: public-api public-api-update
API_CRATES := checkpoint-store consumer-core
RUSTDOC_JSON = RUSTDOC=$(CURDIR)/scripts/rustdoc-json.sh RUSTDOCFLAGS="-Z unstable-options --output-format json" \
	$(CARGO) doc --no-deps --workspace --lib
public-api:
	$(RUSTDOC_JSON)
	$(CARGO) build $(PROGRAMS)
	$(TARGET_DIR)/debug/public-api-check $(TARGET_DIR)/doc $(API_CRATES)
public-api-update:
	$(RUSTDOC_JSON)
	$(CARGO) build $(PROGRAMS)
	$(TARGET_DIR)/debug/public-api-check --update $(TARGET_DIR)/doc $(API_CRATES)

## fmt: format the code
fmt:
	$(CARGO) fmt --all

## lint: the fmt and clippy checks of `make test`
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## module-graph: the library crates' imports between files: fails on a circle (files that
## import each other, test code left out), reports imports that point up the layering
## (scripts/module-graph.py says which; `--edges` lists every import)
.PHONY: module-graph
module-graph:
	python3 scripts/module-graph.py

## doc: the API documentation (dynamodb-streams-consumer's front page is the README), warnings as errors
doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --workspace

## dynamodb-local: install DynamoDB Local (make test does it too)
dynamodb-local:
	scripts/dynamodb-local.sh install

## bench: throughput benchmark against DynamoDB Local (release build): the framework vs a
## plain GetRecords loop; then decode+dispatch on the simulated stream (`cargo bench -p
## dynamodb-streams-consumer --bench decode`, criterion). BENCH_ARGS adds options to the first, e.g.
## `make bench BENCH_ARGS="--records 50000"`.
.PHONY: bench
BENCH_ARGS ?=
bench:
	$(CARGO) build --release -p dynamodb-streams-examples --bin benchmark
	scripts/dynamodb-local.sh run -- sh -c '$(CARGO) run --release --quiet -p dynamodb-streams-examples --bin benchmark -- --endpoint "$$DYNAMODB_ENDPOINT" $(BENCH_ARGS)'
	$(CARGO) bench -p dynamodb-streams-consumer --bench decode

## screenshot: the README's picture of `ddbsc serve` (docs/ddbsc-serve.png), taken by the page
## test in chromium while a killed worker's leases move (DynamoDB Local; debug build)
.PHONY: screenshot
screenshot:
	scripts/browser.sh install
	$(CARGO) build $(PROGRAMS)
	DDBSC_SCREENSHOT=docs/ddbsc-serve.png scripts/dynamodb-local.sh run -- $(CARGO) test --workspace --test serve

## idle-latency: what `jsonl-worker --idle-backoff MIN,MAX` trades, at 3 settings side by side
## (DynamoDB Local, debug build, about 1.5 minutes): write-to-delivery p50/p99 after quiet
## periods, GetRecords per idle shard-hour; IDLE_ARGS adds options, e.g. `make idle-latency
## IDLE_ARGS="--setting default --setting 1s,5s --gap 8s"`.
.PHONY: idle-latency
IDLE_ARGS ?=
idle-latency:
	$(CARGO) build $(PROGRAMS)
	scripts/dynamodb-local.sh run -- sh -c '$(TARGET_DIR)/debug/idle-latency --endpoint "$$DYNAMODB_ENDPOINT" $(IDLE_ARGS)'

## status-demo: what `ddbsc status --lag` shows for 3 jsonl-worker processes sharing 6 tables
## (DynamoDB Local; debug build)
.PHONY: status-demo
status-demo:
	$(CARGO) build $(PROGRAMS)
	scripts/dynamodb-local.sh run -- sh -c '$(TARGET_DIR)/debug/examples/status_demo --endpoint "$$DYNAMODB_ENDPOINT" --worker-bin $(TARGET_DIR)/debug/jsonl-worker --ddbsc-bin $(TARGET_DIR)/debug/ddbsc'

## scale: the 100,000 shards / 1,000 workers simulation (crashes, joins, rolling restart, the hottest
## item; release build); SCALE_SHARDS, SCALE_WORKERS, SCALE_RESTARTS size it smaller
.PHONY: scale
scale:
	$(CARGO) test --release -p dynamodb-streams-consumer --features testkit --test scale -- --ignored --nocapture

## cost: coordination cost, ours and KCL's model, idle and busy ($/hour; release build), and
## the README's chart (docs/cost.csv -> docs/cost.svg)
.PHONY: cost
cost:
	mkdir -p docs
	$(CARGO) run --release --quiet -p dynamodb-streams-consumer --features testkit --example lease_cost -- --sweep --csv docs/cost.csv
	$(CARGO) run --release --quiet -p dynamodb-streams-consumer --features testkit --example cost_chart -- docs/cost.csv docs/cost.svg

## replica-figures: table-replica's changes/s with and without transactions (one replica
## through a 4,000-change backlog, DynamoDB Local, release build)
.PHONY: replica-figures
replica-figures:
	scripts/dynamodb-local.sh run -- $(CARGO) test --release -p dynamodb-streams-examples --test table_replica -- --ignored --nocapture

## explore: the explorer (consumer-core/tests/explorer) over SEEDS seeds from FROM (release
## build): every failing seed with its broken invariant, and seeds per second. SPACE=full
## (or a list of pending-defect flags) widens the drawn space, SPACE=snapshots gives every
## seed a snapshot; EXPLORE_SEED=n EXPLORE_SPACE=s replays one.
.PHONY: explore
SEEDS ?= 1000
FROM ?= 0
SPACE ?= now
explore:
	EXPLORE_SEEDS=$(SEEDS) EXPLORE_FROM=$(FROM) EXPLORE_SPACE=$(SPACE) $(CARGO) test --release -p dynamodb-streams-consumer --features testkit --test explorer -- --ignored --exact explore --nocapture

## memory: a worker's RSS (release build, simulated stream, real time): 1,000 idle leases,
## then 200 shards of 1-4 KB items caught up at once with the default 256 MB budget, with
## 64 MB, and without a budget
.PHONY: memory
MEMORY_RUN = $(CARGO) run --release --quiet -p dynamodb-streams-consumer --features testkit --example memory --
memory:
	$(MEMORY_RUN) idle
	$(MEMORY_RUN) catch-up
	$(MEMORY_RUN) catch-up --max-buffered-mb 64
	$(MEMORY_RUN) catch-up --max-buffered-mb 100000
