# audio-pipeline-qa — developer entry points. `make` or `make help` lists every target.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CARGO     ?= cargo
SUDO      ?= $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
BDD       := $(CARGO) test -p steps --test cucumber
API_URL   ?= http://127.0.0.1:8000
REGISTRY  ?= ghcr.io/audio-pipeline-qa
TAG       ?= latest
# goose options of the `load` runner; override on the command line, e.g. make load-sla LOAD_SLA_ARGS="..."
LOAD_SMOKE_ARGS ?= --users 5 --hatch-rate 5 --run-time 30s
LOAD_SLA_ARGS   ?= --users 50 --hatch-rate 10 --run-time 10m
APT_PACKAGES    := build-essential pkg-config git curl ca-certificates python3 python3-venv \
                   rabbitmq-server postgresql postgresql-client

.PHONY: help install infra-up infra-down infra-status run test test-unit bdd bdd-smoke \
        bdd-component bdd-integration bdd-security bdd-contract bdd-chaos coverage lint format \
        audit load-smoke load-sla bench live validate-deploy docker-build

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

bdd-chaos: ## Behaviour suite, @chaos scenarios
	$(BDD) -- --tags @chaos

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
load-smoke: ## Short load run against API_URL (starts `pipeline live` if nothing answers)
	bash scripts/load.sh $(LOAD_SMOKE_ARGS)

load-sla: ## Full SLA load run; exit 99 when an SLA is breached (reports in reports/load/)
	bash scripts/load.sh $(LOAD_SLA_ARGS)

bench: ## Micro-benchmarks (cargo bench)
	$(CARGO) bench --workspace

## ---- containers
docker-build: ## Build the pipeline and harness images (needs a Docker engine)
	docker build -f Dockerfile -t $(REGISTRY)/pipeline:$(TAG) .
	docker build -f Dockerfile.harness -t $(REGISTRY)/harness:$(TAG) .
