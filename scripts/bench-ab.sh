#!/usr/bin/env bash
# make bench-ab BASELINE=path/to/mailroom: an A/B of two release binaries in one run. The
# service's own phases of `make bench` (end to end, REST POST, cached GET, gRPC; no
# machine limits, no 1,000,000-row search) run for each binary in turn, A B A B …, each
# time on a fresh database, stream and Redis prefix, so both see the same host. Prints
# each figure of every round and the ratio of B's median to A's.
#
#   BASELINE   A: the binary to compare against (required), e.g. a release build of main
#   CANDIDATE  B: defaults to this tree's release build (built here)
#   BENCH_AB_ROUNDS  rounds of A then B (default 2); other BENCH_* knobs pass through
#   (BENCH_LOAD: a built load generator, else this tree's is built once; the end-to-end
#   run with attachments is left out unless BENCH_ATTACHMENT_COUNT is set, since a
#   baseline from before attachments cannot take it)
SCRIPT=bench-ab
. "$(dirname "$0")/bench/two-binaries.sh"
# The load generator, built once for every round.
if [ -z "${BENCH_LOAD:-}" ]; then
  cargo bench --locked --bench load --no-run
  BENCH_LOAD="$(cargo bench --locked --bench load --no-run --message-format=json 2>/dev/null |
    jq -r 'select(.executable != null and .target.name == "load") | .executable' | tail -n 1)"
fi
[ -x "$BENCH_LOAD" ] || fail "no load generator at $BENCH_LOAD"
export BENCH_LOAD
ROUNDS="${BENCH_AB_ROUNDS:-2}"
OUT="${BENCH_OUT_DIR:-$PWD/target/bench}/ab-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$OUT"

for ((round = 1; round <= ROUNDS; round++)); do
  for side in A B; do
    bin="$A"
    [ "$side" = B ] && bin="$B"
    say "round $round, $side: $bin"
    # No config directory on disk: each binary runs on the profiles built into it, which
    # match the keys it knows.
    MAILROOM_CONFIG_DIR="$OUT/built-in-profiles" BENCH_ONLY=service BENCH_BIN="$bin" \
      BENCH_ATTACHMENT_COUNT="${BENCH_ATTACHMENT_COUNT:-0}" \
      BENCH_OUT_DIR="$OUT/$side-$round" scripts/bench.sh \
      >"$OUT/$side-$round.log" 2>&1 || fail "round $round, $side failed: $(tail -n 5 "$OUT/$side-$round.log")"
  done
done

jq -s -r --arg a "$A" --arg b "$B" '
  def median: sort | if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end;
  def n: if type == "number" then (. * 10 | round / 10 | tostring) else tostring end;
  def r: (. * 1000 | round / 1000 | tostring);
  (map(select(.side == "A")) | map(.figures)) as $aruns |
  (map(select(.side == "B")) | map(.figures)) as $bruns |
  [
    ["end to end, emails/s", "e2e_emails_per_s"],
    ["end to end, 100 KB attachment, emails/s", "e2e_attachment_emails_per_s"],
    ["REST POST, req/s", "rest_post_req_per_s"],
    ["REST POST p99, ms", "rest_post_p99_ms"],
    ["REST POST respond-async, req/s", "rest_post_async_req_per_s"],
    ["REST cached GET, req/s", "rest_get_cached_req_per_s"],
    ["REST cached GET p99, ms", "rest_get_cached_p99_ms"],
    ["gRPC GetByID, req/s", "grpc_get_req_per_s"],
    ["gRPC Create, req/s", "grpc_create_req_per_s"],
    ["peak RSS, MiB", "peak_rss_mib"]
  ] as $rows |
  "A: \($a)", "B: \($b)", "",
  "| figure | A rounds | B rounds | B / A (medians) |", "|---|---|---|---|",
  ($rows[] | . as [$name, $k] |
    ($aruns | map(.[$k])) as $av | ($bruns | map(.[$k])) as $bv |
    # A phase left out (the attachments, unless asked for) has no figures: no row.
    select(($av | map(select(. != null)) | length) > 0 and ($bv | map(select(. != null)) | length) > 0) |
    "| \($name) | \($av | map(n) | join(", ")) | \($bv | map(n) | join(", ")) | \(($bv | median) / ($av | median) | r) |")
' <(for f in "$OUT"/A-*/latest.json; do jq '. + {side: "A"}' "$f"; done
    for f in "$OUT"/B-*/latest.json; do jq '. + {side: "B"}' "$f"; done) | tee "$OUT/summary.md"
say "wrote $OUT/summary.md"
