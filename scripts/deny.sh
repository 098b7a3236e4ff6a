#!/usr/bin/env bash
# Supply chain checks (run by `make lint`): `cargo deny check licenses bans sources` with
# deny.toml. Installs cargo-deny into ~/.cargo/bin the first time. Offline: it reads only
# what cargo has already fetched (the advisories check, which needs the network, is not
# part of it).
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DENY_VERSION=0.20.2

if ! cargo deny --version 2>/dev/null | grep -qF "$CARGO_DENY_VERSION"; then
  echo "deny: installing cargo-deny $CARGO_DENY_VERSION (cargo install, a few minutes)"
  # Built in a temporary directory, not in the project's target directory.
  env -u CARGO_TARGET_DIR cargo install --quiet --locked cargo-deny --version "$CARGO_DENY_VERSION"
fi
# Fetch what the lock file names first (a no-op when clippy or a build already did), so
# the check itself never needs the network.
cargo fetch --locked --quiet
# Without their inclusion graphs: with them, the duplicate-version warnings alone run to
# 1,800 lines. Each finding still names the crate and its lock file entry; `cargo tree
# -i CRATE` tells who pulls it in.
cargo deny --locked --offline check --hide-inclusion-graph licenses bans sources
