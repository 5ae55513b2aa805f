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

.PHONY: test demo fmt lint doc dynamodb-local

## test: every test (against a DynamoDB Local started for the run), the doctests (the README's
## example included), then fmt, clippy and warning-free docs
test:
	scripts/dynamodb-local.sh install
	mkdir -p $(dir $(TEST_LOG))
	scripts/dynamodb-local.sh run -- $(CARGO) test --workspace --all-targets 2>&1 | tee $(TEST_LOG)
	# `--all-targets` leaves doctests out; they need no DynamoDB.
	$(CARGO) test --workspace --doc 2>&1 | tee -a $(TEST_LOG)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --workspace
	@awk '/^test result:/ { passed += $$4; failed += $$6 } \
	     END { print "tests: " passed " passed, " failed " failed" }' $(TEST_LOG)

## demo: write to the table `stream-me` and print its change stream (Ctrl-C stops; ITERATIONS=N stops after N cycles)
demo:
	$(CARGO) build -p examples --bin quickstart
	scripts/dynamodb-local.sh run --db-path "$(DEMO_DATA)" -- \
		$(CARGO) run --quiet -p examples --bin quickstart -- $(if $(strip $(ITERATIONS)),--iterations $(strip $(ITERATIONS)))

## figures: failover figures with real jsonl-worker processes against DynamoDB Local (release
## build, default settings): takeover after SIGKILL of a shard owner, gap after a SIGTERM
## handoff, duplicates; FIGURES_ARGS adds options, e.g. `make figures FIGURES_ARGS="--runs 5"`.
.PHONY: figures
FIGURES_ARGS ?=
figures:
	$(CARGO) build --release -p examples --bin jsonl-worker --bin failover-figures
	scripts/dynamodb-local.sh run -- $(CARGO) run --release --quiet -p examples --bin failover-figures -- $(FIGURES_ARGS)

## fmt: format the code
fmt:
	$(CARGO) fmt --all

## lint: the fmt and clippy checks of `make test`
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## doc: the API documentation (consumer-core's front page is the README), warnings as errors
doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --workspace

## dynamodb-local: install DynamoDB Local (make test does it too)
dynamodb-local:
	scripts/dynamodb-local.sh install

## bench: throughput benchmark against DynamoDB Local (release build): the framework vs a
## plain GetRecords loop; then decode+dispatch on the simulated stream (`cargo bench -p
## consumer-core --bench decode`, criterion). BENCH_ARGS adds options to the first, e.g.
## `make bench BENCH_ARGS="--records 50000"`.
.PHONY: bench
BENCH_ARGS ?=
bench:
	$(CARGO) build --release -p examples --bin benchmark
	scripts/dynamodb-local.sh run -- sh -c '$(CARGO) run --release --quiet -p examples --bin benchmark -- --endpoint "$$DYNAMODB_ENDPOINT" $(BENCH_ARGS)'
	$(CARGO) bench -p consumer-core --bench decode

## status-demo: what `ddbsc status --lag` shows for 3 jsonl-worker processes sharing 6 tables
## (DynamoDB Local; debug build)
.PHONY: status-demo
status-demo:
	$(CARGO) build -p examples --bin jsonl-worker -p ddbsc --bin ddbsc --example status_demo
	scripts/dynamodb-local.sh run -- sh -c '$(CARGO) run --quiet -p ddbsc --example status_demo -- --endpoint "$$DYNAMODB_ENDPOINT" --worker-bin target/debug/jsonl-worker --ddbsc-bin target/debug/ddbsc'

## scale: the 10,000 shards / 50 workers simulation (crashes, joins, invariants; release build)
.PHONY: scale
scale:
	$(CARGO) test --release -p consumer-core --features testkit --test scale -- --ignored --nocapture

## cost: coordination cost, ours and KCL's model, idle and busy ($/hour; release build), and
## the README's chart (docs/cost.csv -> docs/cost.svg)
.PHONY: cost
cost:
	mkdir -p docs
	$(CARGO) run --release --quiet -p consumer-core --features testkit --example lease_cost -- --sweep --csv docs/cost.csv
	$(CARGO) run --release --quiet -p consumer-core --features testkit --example cost_chart -- docs/cost.csv docs/cost.svg

## replica-figures: table-replica's changes/s with and without transactions (one replica
## through a 4,000-change backlog, DynamoDB Local, release build)
.PHONY: replica-figures
replica-figures:
	scripts/dynamodb-local.sh run -- $(CARGO) test --release -p examples --test table_replica -- --ignored --nocapture

## explore: the explorer (consumer-core/tests/explorer) over SEEDS seeds from FROM (release
## build): every failing seed with its broken invariant, and seeds per second. SPACE=full
## (or a list of pending-defect flags) widens the drawn space; EXPLORE_SEED=n replays one.
.PHONY: explore
SEEDS ?= 1000
FROM ?= 0
SPACE ?= now
explore:
	EXPLORE_SEEDS=$(SEEDS) EXPLORE_FROM=$(FROM) EXPLORE_SPACE=$(SPACE) $(CARGO) test --release -p consumer-core --features testkit --test explorer -- --ignored --exact explore --nocapture

## memory: a worker's RSS (release build, simulated stream, real time): 1,000 idle leases,
## then 200 shards of 1-4 KB items caught up at once with the default 256 MB budget, with
## 64 MB, and without a budget
.PHONY: memory
MEMORY_RUN = $(CARGO) run --release --quiet -p consumer-core --features testkit --example memory --
memory:
	$(MEMORY_RUN) idle
	$(MEMORY_RUN) catch-up
	$(MEMORY_RUN) catch-up --max-buffered-mb 64
	$(MEMORY_RUN) catch-up --max-buffered-mb 100000
