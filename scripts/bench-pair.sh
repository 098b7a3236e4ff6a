#!/usr/bin/env bash
# make bench-pair BASELINE=path/to/mailroom: the REST cached GET (or the REST POST, or gRPC
# Create) of two release binaries, measured at the same time. Both services run side by
# side (each on its own database, stream and Redis prefix) and one load generator (wrk, or
# benches/load.rs for gRPC) loads each at once, so whatever else the host does during a
# round slows both alike. Halfway, both are started again with their ports and
# their order of start swapped. Prints each round's req/s and B / A, and the median.
#
# Why: on this kind of machine, the cached GET of one binary measured alone swings by 10
# to 15% from one round to the next (scripts/bench-ab.sh runs the binaries in turn), so a
# change of 5% cannot be told from noise there. Measured side by side, a binary against
# itself came out at 0.95 to 1.07 per round and 0.99 for the median of 8 rounds.
#
#   BASELINE   A (required)         CANDIDATE  B: defaults to this tree's release build
#   BENCH_PAIR_ROUNDS  rounds (default 8)   BENCH_DURATION  seconds per round (default 8)
#   BENCH_CONNECTIONS  connections per binary (default 32)
#   BENCH_PAIR_REQUEST  get (default): the cached GET of one email; post: the synchronous
#                       REST POST of `make bench`; grpc-create: gRPC Create as `make bench`
#                       calls it (BENCH_LOAD, else built here). Deliveries go to one smtp-sink
SCRIPT=bench-pair
. "$(dirname "$0")/bench/two-binaries.sh"
command -v wrk >/dev/null || fail "wrk is missing: apt-get install wrk (make bench installs it)"
ROUNDS="${BENCH_PAIR_ROUNDS:-8}"
DURATION="${BENCH_DURATION:-8}"
CONNECTIONS="${BENCH_CONNECTIONS:-32}"
REQUEST="${BENCH_PAIR_REQUEST:-get}"
case "$REQUEST" in get | post | grpc-create) ;; *) fail "BENCH_PAIR_REQUEST is get, post or grpc-create, not $REQUEST" ;; esac
if [ "$REQUEST" = grpc-create ] && [ -z "${BENCH_LOAD:-}" ]; then
  cargo bench --locked --bench load --no-run
  BENCH_LOAD="$(cargo bench --locked --bench load --no-run --message-format=json 2>/dev/null |
    jq -r 'select(.executable != null and .target.name == "load") | .executable' | tail -n 1)"
fi
PG="${BENCH_PG:-postgres://postgres:postgres@127.0.0.1:5432}"
REDIS_URL="${BENCH_REDIS:-redis://127.0.0.1:6379}"
TAG="pair$$"
WORK="$(mktemp -d)"
PIDS=()
SINK_PID=""
SMTP_PORT=19925

admin_sql() { psql "$PG/postgres" -v ON_ERROR_STOP=1 -qtAc "$1"; }
# Deletes a JetStream stream through the server's API (mailroom has no command for it).
drop_stream() { # name
  python3 - "$1" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", 4222), timeout=5)
s.recv(4096)
s.sendall(b'CONNECT {"verbose":false}\r\nPUB $JS.API.STREAM.DELETE.%s 0\r\n\r\nPING\r\n' % sys.argv[1].encode())
while b"PONG" not in s.recv(4096):
    pass
PY
}
stop_services() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=()
}
cleanup() {
  set +e
  stop_services
  [ -n "$SINK_PID" ] && kill "$SINK_PID" 2>/dev/null && wait "$SINK_PID" 2>/dev/null
  for side in a b; do
    admin_sql "DROP DATABASE IF EXISTS \"${TAG}_$side\" WITH (FORCE)" >/dev/null 2>&1
    redis-cli -u "$REDIS_URL" --scan --pattern "${TAG}$side:*" 2>/dev/null |
      xargs -r -n 500 redis-cli -u "$REDIS_URL" del >/dev/null 2>&1
    drop_stream "${TAG}${side}_MAIL" 2>/dev/null
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Starts one binary on the profiles built into it (as bench-ab does), with one email it
# then serves from its cache; the email's id goes to $WORK/SIDE.id.
start() { # side binary port
  local side="$1" bin="$2" port="$3" db="${TAG}_$1"
  [ -n "$(admin_sql "SELECT 1 FROM pg_database WHERE datname = '$db'")" ] ||
    admin_sql "CREATE DATABASE \"$db\"" >/dev/null
  [ -d "$WORK/$side-certs" ] || "$bin" certs --dir "$WORK/$side-certs" >/dev/null
  mkdir -p "$WORK/built-in-profiles"
  env MAILROOM_CONFIG_DIR="$WORK/built-in-profiles" MAILROOM_ENV=local \
    MAILROOM__HTTP__ADDR="127.0.0.1:$port" MAILROOM__GRPC__ADDR="127.0.0.1:$((port + 1))" \
    MAILROOM__METRICS__ADDR="127.0.0.1:$((port + 2))" \
    MAILROOM__GRPC__TLS_CERT="$WORK/$side-certs/server.crt" MAILROOM__GRPC__TLS_KEY="$WORK/$side-certs/server.key" \
    MAILROOM__DATABASE__URL="$PG/$db" MAILROOM__NATS__PREFIX="${TAG}$side." \
    MAILROOM__REDIS__URL="$REDIS_URL" MAILROOM__REDIS__KEY_PREFIX="${TAG}$side:" \
    MAILROOM__AUTH__RATE_LIMIT__PER_SECOND=10000000 MAILROOM__AUTH__RATE_LIMIT__BURST=10000000 \
    MAILROOM__SMTP__HOST=127.0.0.1 MAILROOM__SMTP__PORT="$SMTP_PORT" \
    MAILROOM__TELEMETRY__OTLP_ENDPOINT="" MAILROOM__TELEMETRY__LOG_FILTER=warn RUST_LOG=warn \
    sh -c '"$0" migrate up >/dev/null && exec "$0" serve' "$bin" >"$WORK/$side.log" 2>&1 &
  PIDS+=("$!")
  local i
  for ((i = 0; i < 300; i++)); do
    curl -sf "http://127.0.0.1:$port/ready" >/dev/null && break
    sleep 0.1
  done
  curl -sf "http://127.0.0.1:$port/ready" >/dev/null || fail "$side is not ready: $(tail -n 5 "$WORK/$side.log")"
  curl -sf -H 'Authorization: Bearer local-dev-key' -H 'Content-Type: application/json' \
    -d '{"from":"a@example.com","to":"b@example.com","subject":"Hello","message":"A body"}' \
    "http://127.0.0.1:$port/api/v1/email" | jq -r .emailID >"$WORK/$side.id"
}

# The POST body of `make bench`'s REST POST phase.
POST_BODY="$(jq -nc '{from: "bench@example.com", to: "rest@example.com", subject: "Bench REST",
  message: "Hello, this is a message of the mailroom benchmark. Your order has shipped and will arrive within three working days. Thank you."}')"
load() { # side port output
  if [ "$REQUEST" = grpc-create ]; then
    "$BENCH_LOAD" --bench grpc --addr "https://127.0.0.1:$(($2 + 1))" --ca "$WORK/$1-certs/ca.crt" \
      --key local-dev-key --method create --connections 4 --concurrency "$CONNECTIONS" \
      --duration-secs "$DURATION" | grep '^{' >"$3"
    return
  fi
  local method=GET body="" path="email/$(cat "$WORK/$1.id")"
  [ "$REQUEST" = post ] && method=POST body="$POST_BODY" path=email
  BENCH_METHOD="$method" BENCH_BODY="$body" BENCH_KEY=local-dev-key \
    wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --timeout 10s \
    -s scripts/bench/wrk.lua "http://127.0.0.1:$2/api/v1/$path" | grep '^{"requests"' >"$3"
}

# Both sides at once: a warm-up, then the rounds of one half.
rounds() { # port_a port_b first_round last_round
  local round pa pb ra rb ratio
  load a "$1" /dev/null & pa=$!
  load b "$2" /dev/null & pb=$!
  wait "$pa" "$pb"
  for ((round = $3; round <= $4; round++)); do
    load a "$1" "$WORK/a.json" & pa=$!
    load b "$2" "$WORK/b.json" & pb=$!
    wait "$pa" "$pb"
    ra="$(jq ".req_per_s * 10 | round / 10" "$WORK/a.json")" rb="$(jq ".req_per_s * 10 | round / 10" "$WORK/b.json")"
    ratio="$(jq -n "$rb / $ra * 1000 | round / 1000")"
    echo "$ratio" >>"$WORK/ratios"
    printf '| %d | %s | %s | %s |\n' "$round" "$ra" "$rb" "$ratio"
  done
}

# Deliveries go to one sink (only the POST makes any); its port is fixed like the others.
if [ "$(id -u)" -eq 0 ]; then sink_user=(-u nobody); else sink_user=(); fi
command -v smtp-sink >/dev/null || fail "smtp-sink is missing: install postfix (make bench does)"
smtp-sink "${sink_user[@]}" 127.0.0.1:"$SMTP_PORT" 1000 >"$WORK/smtp-sink.log" 2>&1 &
SINK_PID=$!

say "A: $A"
say "B: $B"
say "request: $REQUEST"
HALF=$((ROUNDS / 2))
printf '| round | A req/s | B req/s | B / A |\n|---|---|---|---|\n'
start a "$A" 19710
start b "$B" 19810
rounds 19710 19810 1 "$HALF"
stop_services
start b "$B" 19710
start a "$A" 19810
rounds 19810 19710 $((HALF + 1)) "$ROUNDS"
jq -s -r 'sort | (if length % 2 == 1 then .[length / 2 | floor]
  else (.[length / 2 - 1] + .[length / 2]) / 2 end) | "median B / A: \(. * 1000 | round / 1000)"' "$WORK/ratios"
