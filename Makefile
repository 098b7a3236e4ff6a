# mailroom: the two commands are `make run` and `make test`; the rest are helpers.
SHELL := /bin/bash

# Builds are shared between clones of this repository, which makes a fresh clone fast.
CARGO_TARGET_DIR ?= $(HOME)/.cache/mailroom/target
export CARGO_TARGET_DIR
CARGO ?= cargo
MAILROOM_ENV ?= local
export MAILROOM_ENV
# The compose v2 plugin when there is one, else the standalone docker-compose (1.29 works).
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)

.PHONY: help run test fuzz bench bench-ab bench-pair deps deps-stop build cert migrate_up migrate_down migrate_status swagger lint fmt \
	diagrams local local-down develop develop-down

## help: list the targets with what each does
help:
	@awk '/^## [a-z_, -]+: / { line = substr($$0, 4); name = substr(line, 1, index(line, ": ") - 1); \
		printf "  %-13s %s\n", name, substr(line, length(name) + 3); comment = 1; next } \
		/^## / && comment { printf "  %-13s %s\n", "", substr($$0, 4); next } { comment = 0 }' $(MAKEFILE_LIST)

## run: dependencies up, database created and migrated, service in the foreground
run: deps
	$(CARGO) build --release --bin mailroom
	$(CARGO_TARGET_DIR)/release/mailroom certs
	$(CARGO_TARGET_DIR)/release/mailroom migrate up
	$(CARGO_TARGET_DIR)/release/mailroom serve

## test: dependencies up, then every test (unit and integration, against the real services)
test:
	scripts/test.sh

## fuzz: schemathesis against a running mailroom's OpenAPI document (also part of `make test`)
fuzz: deps
	scripts/fuzz.sh

## bench: measure mailroom against this machine's limits (pgbench, smtp-sink, nginx) in one
## run; prints a table and writes target/bench/latest.json. Takes about 10 minutes. Starts
## PostgreSQL, Redis and NATS like `make deps` when they are down (never maildev).
bench:
	scripts/bench.sh

## bench-ab: the service's bench phases for BASELINE=path/to/mailroom (A) and this tree's
## release build (B), alternating in one run; prints B / A for each figure
bench-ab:
	scripts/bench-ab.sh

## bench-pair: the REST cached GET (BENCH_PAIR_REQUEST=post or grpc-create: that call) of
## BASELINE=path/to/mailroom (A) and this tree's release build (B), both loaded at the same
## time, so the host's noise hits both; prints B / A
bench-pair:
	scripts/bench-pair.sh

## deps: check PostgreSQL (and its login), Redis, NATS and maildev; say in one message what is
## missing and how to install it; start what is installed; install and start maildev
deps:
	scripts/deps.sh

## deps-stop: stop what `make deps` started (maildev, and NATS or Redis if it started them)
deps-stop:
	scripts/deps-stop.sh

## build: the release binary
build:
	$(CARGO) build --release --bin mailroom

## cert: development CA and gRPC server certificate in certs/ (kept if present; FORCE=1 replaces them)
cert:
	$(CARGO) run --quiet --bin mailroom -- certs $(if $(FORCE),--force)

## migrate_up: bring the database schema up to date (migrate_down reverts the newest
## migration, migrate_status lists them)
migrate_up: deps
	$(CARGO) run --quiet --bin mailroom -- migrate up

migrate_down: deps
	$(CARGO) run --quiet --bin mailroom -- migrate down

migrate_status: deps
	$(CARGO) run --quiet --bin mailroom -- migrate status

## swagger: write the committed OpenAPI document (a test fails when it is stale)
swagger:
	$(CARGO) run --quiet --bin mailroom -- openapi > docs/openapi.json

## lint: formatting and clippy, warnings are errors; licenses, bans and sources (cargo-deny)
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	scripts/deny.sh

## fmt: format the code
fmt:
	$(CARGO) fmt --all

## diagrams: regenerate docs/*.svg from their Graphviz sources (docs/*.dot; needs graphviz)
diagrams:
	for source in docs/*.dot; do dot -Tsvg "$$source" -o "$${source%.dot}.svg"; done

## local: the dependencies and tooling in Docker (PostgreSQL, Redis, NATS, maildev, Jaeger,
## Prometheus, Alertmanager, Grafana, node_exporter, nginx), for a service run with `make run`
local: certs/server.crt
	$(COMPOSE) -p mailroom-local -f docker-compose.local.yml up -d --build

## local-down: stop the containers of `make local` (develop-down: those of `make develop`;
## the data volumes stay)
local-down:
	$(COMPOSE) -p mailroom-local -f docker-compose.local.yml down

## develop: everything in Docker, two mailroom instances behind nginx, rebuilt on each change
develop: certs/server.crt
	$(COMPOSE) -p mailroom-dev -f docker-compose.dev.yml up -d --build
	@echo "follow the instances with: $(COMPOSE) -p mailroom-dev -f docker-compose.dev.yml logs -f mailroom-1 mailroom-2"

develop-down:
	$(COMPOSE) -p mailroom-dev -f docker-compose.dev.yml down

# nginx serves TLS with the dev certificate; the containers mount certs/.
certs/server.crt:
	$(CARGO) run --quiet --bin mailroom -- certs
