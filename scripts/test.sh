#!/usr/bin/env bash
# `make test`: brings the dependencies up, then runs every test against them. Stops the
# maildev it started, if it started one.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mailroom/target}"
RUN_DIR="${MAILROOM_RUN_DIR:-$HOME/.cache/mailroom/run}"

smtp_was_up=no
(exec 3<>/dev/tcp/127.0.0.1/1025) 2>/dev/null && smtp_was_up=yes
scripts/deps.sh
if [ "$smtp_was_up" = no ] && [ -f "$RUN_DIR/maildev.pid" ]; then
  trap 'kill "$(cat "$RUN_DIR/maildev.pid")" 2>/dev/null || true; rm -f "$RUN_DIR/maildev.pid"' EXIT
fi

# The programs the deployment tests drive (promtool and prometheus, nginx, chromium,
# docker-compose; installed with apt-get when missing), then the deployment files that
# are not Rust: promtool and docker-compose checks.
scripts/test-tools.sh
scripts/check-deploy.sh
scripts/test-leftovers.sh

# Integration tests wait on the network, not the CPU: run more of them at once than
# there are cores.
cargo test --all-targets --locked -- --test-threads "${TEST_THREADS:-8}"

# The REST API against its own OpenAPI document: schemathesis, with the test key.
scripts/fuzz.sh
