# Sourced by bench-ab.sh and bench-pair.sh (which set SCRIPT first): the repository root as
# working directory, say/fail, and the two binaries compared, A from BASELINE (required)
# and B from CANDIDATE, else this tree's release build, built here.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mailroom/target}"

say() { printf '%s: %s\n' "$SCRIPT" "$*" >&2; }
fail() { printf '%s: %s\n' "$SCRIPT" "$*" >&2; exit 1; }

A="${BASELINE:-}"
[ -n "$A" ] || fail "set BASELINE to the mailroom binary to compare against"
[ -x "$A" ] || fail "BASELINE $A is not an executable"
B="${CANDIDATE:-}"
if [ -z "$B" ]; then
  cargo build --release --locked --bin mailroom
  B="$CARGO_TARGET_DIR/release/mailroom"
fi
