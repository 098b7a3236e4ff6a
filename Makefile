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

.PHONY: run test fuzz bench bench-ab deps deps-stop build cert migrate_up migrate_down migrate_status swagger lint fmt \
	local local-down develop develop-down

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

## deps: check PostgreSQL, Redis and NATS, start what is installed, install and start maildev
deps:
	scripts/deps.sh

## deps-stop: stop what `make deps` started (maildev, and NATS or Redis if it started them)
deps-stop:
	scripts/deps-stop.sh

build:
	$(CARGO) build --release --bin mailroom

## cert: development CA and gRPC server certificate in certs/ (kept if present; FORCE=1 replaces them)
cert:
	$(CARGO) run --quiet --bin mailroom -- certs $(if $(FORCE),--force)

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

fmt:
	$(CARGO) fmt --all

## local: the dependencies and tooling in Docker (PostgreSQL, Redis, NATS, MailHog, Jaeger,
## Prometheus, Grafana, node_exporter, nginx), for a service run with `make run`
local: certs/server.crt
	$(COMPOSE) -p mailroom-local -f docker-compose.local.yml up -d --build

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
