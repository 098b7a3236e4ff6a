# mailroom: the two commands are `make run` and `make test`; the rest are helpers.
SHELL := /bin/bash

# Builds are shared between clones of this repository, which makes a fresh clone fast.
CARGO_TARGET_DIR ?= $(HOME)/.cache/mailroom/target
export CARGO_TARGET_DIR
CARGO ?= cargo
MAILROOM_ENV ?= local
export MAILROOM_ENV

.PHONY: run test deps deps-stop build cert migrate_up migrate_down migrate_status swagger lint fmt clean-test-data

## run: dependencies up, database created and migrated, service in the foreground
run: deps
	$(CARGO) build --release --bin mailroom
	$(CARGO_TARGET_DIR)/release/mailroom certs
	$(CARGO_TARGET_DIR)/release/mailroom migrate up
	$(CARGO_TARGET_DIR)/release/mailroom serve

## test: dependencies up, then every test (unit and integration, against the real services)
test:
	scripts/test.sh

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

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all
