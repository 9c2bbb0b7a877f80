# audio-pipeline-qa — developer entry points. `make` or `make help` lists every target.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CARGO     ?= cargo
SUDO      ?= $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
BDD       := $(CARGO) test --workspace --test cucumber
API_URL   ?= http://127.0.0.1:8000
REGISTRY  ?= ghcr.io/audio-pipeline-qa
TAG       ?= latest
# Options of the `load` runner (goose's plus its own); override on the command line, e.g.
# make load-sla LOAD_SLA_ARGS="..." LOAD_SLA_PROFILE=target
LOAD_SMOKE_ARGS ?=
LOAD_SLA_ARGS   ?= --gates rest,pipeline --users 50 --increase-rate 10 --run-time 10m
LOAD_SLA_PROFILE ?= floor
# `make load-spec LOAD_SPEC_TAGS='@load and @rest'`; `make load-scale LOAD_SCALE_ARGS='--secs 20'`
LOAD_SPEC_TAGS  ?= @load
LOAD_SPEC_ARGS  ?=
LOAD_SCALE_ARGS ?=
# `make mutants SHARD=3/16` runs one shard of the full mutation run (0-based, as the CI matrix)
SHARD           ?=
APT_PACKAGES    := build-essential pkg-config git curl ca-certificates python3 python3-venv \
                   rabbitmq-server postgresql postgresql-client

.PHONY: help install infra-up infra-down infra-status run test test-unit bdd bdd-smoke \
        bdd-component bdd-integration bdd-security bdd-contract bdd-chaos chaos-nightly fuzz fuzz-deep mutants-sample mutants coverage lint format \
        audit load-smoke load-sla load-spec load-distributed-test load-scale load-bench bench live validate-deploy docker-build

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "; print "Usage: make <target>"} \
	  /^## / {sub(/^## -* */, ""); printf "\n%s:\n", $$0; next} \
	  /^[a-zA-Z0-9_-]+:.*## / {printf "  %-18s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

## ---- setup & infrastructure
install: ## Install Debian packages (broker, database, build tools) and Rust components/tools
	$(SUDO) apt-get update
	$(SUDO) apt-get install -y --no-install-recommends $(APT_PACKAGES)
	rustup component add rustfmt clippy llvm-tools-preview
	$(CARGO) install --locked cargo-llvm-cov cargo-audit

infra-up: ## Start RabbitMQ and PostgreSQL (scripts/infra.sh up)
	bash scripts/infra.sh up

infra-down: ## Stop RabbitMQ and PostgreSQL (scripts/infra.sh down)
	bash scripts/infra.sh down

infra-status: ## Show broker/database status (scripts/infra.sh status)
	bash scripts/infra.sh status

## ---- run
run: ## Run the main job (scripts/main.sh)
	bash scripts/main.sh

live: ## Run every component in one process for local exploration
	$(CARGO) run -p services --bin pipeline -- live

## ---- tests
test: ## Run everything CI runs (scripts/test-all.sh)
	bash scripts/test-all.sh

test-unit: ## Unit tests of every crate
	$(CARGO) test --workspace --lib

bdd: ## Whole behaviour suite (reports in reports/)
	$(BDD)

bdd-smoke: ## Behaviour suite, @smoke scenarios
	$(BDD) -- --tags @smoke

bdd-component: ## Behaviour suite, @component scenarios
	$(BDD) -- --tags @component

bdd-integration: ## Behaviour suite, @integration scenarios
	$(BDD) -- --tags @integration

bdd-security: ## Behaviour suite, @security scenarios
	$(BDD) -- --tags @security

bdd-contract: ## Behaviour suite, @contract scenarios
	$(BDD) -- --tags @contract

bdd-chaos: ## Chaos suite, the fast subset CI runs (private broker and database, fault proxies)
	$(BDD) -- --tags "@chaos and not @nightly"

chaos-nightly: ## Chaos suite, every scenario (the nightly job): ~12 minutes
	QA_NIGHTLY=1 $(BDD) -- --tags @chaos

fuzz: ## Hostile input, fixed seed (what CI runs): 600 inputs over the three channels
	$(BDD) -- --tags @fuzz

fuzz-deep: ## Hostile input, random seed (printed) and 1700 inputs per channel: the nightly run
	QA_FUZZ_SEED=random QA_FUZZ_INPUTS=1700 $(BDD) -- --tags @fuzz

mutants-sample: ## Mutation score of a fixed sample of services/ (every 64th mutant; <= 10 min on a built tree)
	scripts/mutants.sh sample

mutants: ## Mutation score of all of services/ (hours on 2 cores; CI shards it nightly). SHARD=k/n for one shard
	scripts/mutants.sh full $(SHARD)

coverage: ## Line coverage of harness + services with cargo-llvm-cov; fails under 80%
	$(CARGO) llvm-cov -p harness -p services --lib --fail-under-lines 80 --summary-only

## ---- static checks
lint: ## Clippy on all targets, warnings are errors
	$(CARGO) clippy --workspace --all-targets -- -D warnings

format: ## Format all crates (use `cargo fmt --all -- --check` to only check)
	$(CARGO) fmt --all

audit: ## RustSec advisory check of Cargo.lock
	$(CARGO) audit

validate-deploy: ## Validate Dockerfiles, docker-compose.yml, k8s/, CI workflow (offline after first run)
	bash scripts/validate-deploy.sh
	$(CARGO) test -p harness --test deployment_manifests

## ---- performance
load-smoke: ## CI load smoke: starts its own services, floor gates, small counts, < 60 s; last line `load-smoke: N passed, M failed`
	bash scripts/load-smoke.sh $(LOAD_SMOKE_ARGS)

load-sla: ## Full SLA run (REST against API_URL or a started `pipeline live`, plus pipeline gates); exit 99 = SLA breached
	LOAD_SLA_PROFILE=$(LOAD_SLA_PROFILE) bash scripts/load.sh $(LOAD_SLA_ARGS)

load-spec: ## Gherkin SLA specs (features/sla, @load; release build, private API and pipelines); exit 99 = SLA breached
	$(CARGO) build --release -q -p services --bin pipeline -p load --bin load
	target/release/load --services-bin target/release/pipeline spec --tags '$(LOAD_SPEC_TAGS)' $(LOAD_SPEC_ARGS)

load-distributed-test: ## K worker processes on loopback, merged: exactness and loud failure (load/tests/distributed.rs)
	$(CARGO) build -q -p services --bin pipeline
	$(CARGO) test -p load --test distributed

load-scale: ## Scaling figure: 1, 2, 4 local workers against one API (release build); achieved rate, merged p99
	$(CARGO) build --release -q -p services --bin pipeline -p load --bin load
	target/release/load --services-bin target/release/pipeline scale $(LOAD_SCALE_ARGS)

load-bench: ## Benchmarks: goose vs wrk vs Locust, pipeline vs raw broker, DataWriter vs raw INSERT, REST p99 at half load
	bash scripts/bench.sh

bench: ## Micro-benchmarks (cargo bench)
	$(CARGO) bench --workspace

## ---- containers
docker-build: ## Build the pipeline and harness images (needs a Docker engine)
	docker build -f Dockerfile -t $(REGISTRY)/pipeline:$(TAG) .
	docker build -f Dockerfile.harness -t $(REGISTRY)/harness:$(TAG) .
