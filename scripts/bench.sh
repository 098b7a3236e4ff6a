#!/usr/bin/env bash
# make bench: measures mailroom against this machine's own limits, in one run, so the
# ratios hold however loaded the machine is. Never part of `make test`.
#
#   limits      pgbench single-row INSERT into an emails table (c=8, c=64), postfix
#               smtp-source -> smtp-sink (new connection per message, reused), wrk -> nginx
#   mailroom    end-to-end create events -> sent, REST POST, REST cached GET, gRPC GetByID
#               and Create, search and list on 1,000,000 rows, end to end again on top
#               of them, peak RSS
#
# Installs what it needs (wrk, postfix, pgbench, nginx, jq) with apt-get, builds the
# release binary and benches/load.rs, runs everything on 127.0.0.1 with its own database,
# NATS prefix, Redis prefix and ports, and removes all of it on exit. Writes
# target/bench/bench-TIMESTAMP.json (and latest.json) and prints a table.
#
# Knobs (environment): BENCH_E2E_COUNT (20000), BENCH_ATTACHMENT_COUNT (2000 emails with a
# 100 KB attachment each, end to end; 0 leaves that phase and its limit out), BENCH_DURATION (seconds per HTTP/gRPC
# measurement, 15), BENCH_CONNECTIONS (64), BENCH_SEARCH_ROWS (1000000), BENCH_LIST_ROUNDS
# (5 first pages of each listing, then twice as many pages by cursor; 0 leaves the listing
# out), BENCH_PGBENCH_SECS
# (15), BENCH_SMTP_MESSAGES (20000), BENCH_SMTP_SESSIONS (20), BENCH_OUT_DIR, BENCH_PG
# (server URL without database), BENCH_NATS, BENCH_REDIS, BENCH_PERF=1 (perf record -e
# cpu-clock of the service during the e2e, REST and gRPC phases, into the output directory;
# BENCH_PERF=system records every process on the machine instead, PostgreSQL and NATS too),
# BENCH_BIN (a mailroom binary to measure instead of building this tree's), BENCH_LOAD (a
# built load generator, benches/load.rs, instead of building it),
# BENCH_ONLY=service (the service's own phases only: no limits, no search on 1,000,000
# rows; what scripts/bench-ab.sh runs for each binary it compares).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mailroom/target}"
OUT_DIR="${BENCH_OUT_DIR:-$ROOT/target/bench}"
E2E_COUNT="${BENCH_E2E_COUNT:-20000}"
DURATION="${BENCH_DURATION:-15}"
CONNECTIONS="${BENCH_CONNECTIONS:-64}"
SEARCH_ROWS="${BENCH_SEARCH_ROWS:-1000000}"
SEARCH_ROUNDS="${BENCH_SEARCH_ROUNDS:-30}"
# Each listing's first page this many times, then as many pages by cursor: a listing
# that walks the table takes seconds on 1,000,000 rows.
LIST_ROUNDS="${BENCH_LIST_ROUNDS:-5}"
PGBENCH_SECS="${BENCH_PGBENCH_SECS:-15}"
SMTP_MESSAGES="${BENCH_SMTP_MESSAGES:-20000}"
SMTP_SESSIONS="${BENCH_SMTP_SESSIONS:-20}"
ATTACHMENT_COUNT="${BENCH_ATTACHMENT_COUNT:-2000}"
PG="${BENCH_PG:-postgres://postgres:postgres@127.0.0.1:5432}"
NATS_URL="${BENCH_NATS:-nats://127.0.0.1:4222}"
REDIS_URL="${BENCH_REDIS:-redis://127.0.0.1:6379}"
KEY=local-dev-key # accepted by the local profile

say() { printf 'bench: %s\n' "$*" >&2; }
fail() { printf 'bench: %s\n' "$*" >&2; exit 1; }

# --- tools ------------------------------------------------------------------------------
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi
}
have() { command -v "$1" >/dev/null || [ -x "/usr/sbin/$1" ]; }
missing=()
have wrk || missing+=(wrk)
have smtp-sink || missing+=(postfix)
have pgbench || missing+=(postgresql-client)
have nginx || missing+=(nginx)
have jq || missing+=(jq)
have psql || missing+=(postgresql-client)
have redis-cli || missing+=(redis-tools)
have curl || missing+=(curl)
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing ${missing[*]} with apt-get"
  # postfix only for its smtp-sink and smtp-source: no mail system configured or started.
  echo "postfix postfix/main_mailer_type select No configuration" | as_root debconf-set-selections
  as_root apt-get update -q >/dev/null
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi
PATH="$PATH:/usr/sbin"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# What cleanup() removes; set as each comes to exist.
SERVICE_PID="" SINK_PID="" NGINX_PID="" MAILDEV_PID="" MAILDEV_PIDFILE="" LOAD="" DB="" PGBENCH_DB="" STREAM=""
REDIS_PREFIX="" WORK=""

admin_sql() { psql "$PG/postgres" -v ON_ERROR_STOP=1 -qtAc "$1"; }

stop_pid() { # pid seconds
  [ -n "$1" ] || return 0
  kill -TERM "$1" 2>/dev/null || return 0
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    kill -0 "$1" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$1" 2>/dev/null || true
}

cleanup() {
  set +e
  stop_pid "$SERVICE_PID" 40
  stop_pid "$NGINX_PID" 10
  stop_pid "$SINK_PID" 10
  stop_pid "$MAILDEV_PID" 10
  [ -n "$MAILDEV_PIDFILE" ] && rm -f "$MAILDEV_PIDFILE"
  wait 2>/dev/null
  [ -n "$DB" ] && admin_sql "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" 2>/dev/null
  [ -n "$PGBENCH_DB" ] && admin_sql "DROP DATABASE IF EXISTS \"$PGBENCH_DB\" WITH (FORCE)" 2>/dev/null
  [ -n "$LOAD" ] && [ -n "$STREAM" ] &&
    "$LOAD" --bench drop-stream --nats "$NATS_URL" --name "$STREAM" >/dev/null 2>&1
  [ -n "$REDIS_PREFIX" ] && redis-cli -u "$REDIS_URL" --scan --pattern "${REDIS_PREFIX}*" 2>/dev/null |
    xargs -r -n 500 redis-cli -u "$REDIS_URL" del >/dev/null 2>&1
  [ -n "$WORK" ] && rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# PostgreSQL, Redis and NATS: when one is down, scripts/deps.sh starts it, as for make test.
# deps.sh also starts maildev when nothing listens on 1025; the bench has no use for it,
# so a maildev started here is stopped at the end.
if ! port_open 5432 || ! port_open 6379 || ! port_open 4222; then
  smtp_was_up=no
  port_open 1025 && smtp_was_up=yes
  scripts/deps.sh >&2
  run_dir="${MAILROOM_RUN_DIR:-$HOME/.cache/mailroom/run}"
  if [ "$smtp_was_up" = no ] && [ -f "$run_dir/maildev.pid" ]; then
    MAILDEV_PID="$(cat "$run_dir/maildev.pid")"
    MAILDEV_PIDFILE="$run_dir/maildev.pid"
  fi
fi

# --- build ------------------------------------------------------------------------------
say "building the release binary and the load generator"
ONLY="${BENCH_ONLY:-}"
case "$ONLY" in "" | service) ;; *) fail "BENCH_ONLY is empty or service, not $ONLY" ;; esac
if [ -n "${BENCH_BIN:-}" ]; then
  BIN="$BENCH_BIN"
  [ -x "$BIN" ] || fail "BENCH_BIN $BIN is not an executable"
else
  cargo build --release --locked --bin mailroom
  BIN="$CARGO_TARGET_DIR/release/mailroom"
fi
if [ -n "${BENCH_LOAD:-}" ]; then
  LOAD="$BENCH_LOAD"
else
  cargo bench --locked --bench load --no-run
  LOAD="$(cargo bench --locked --bench load --no-run --message-format=json 2>/dev/null |
    jq -r 'select(.executable != null and .target.name == "load") | .executable' | tail -n 1)"
fi
[ -x "$LOAD" ] || fail "could not find the load generator's executable"

# --- isolation and cleanup --------------------------------------------------------------
TAG="$(date +%s)_$RANDOM"
DB="mailroom_bench_$TAG"
PGBENCH_DB="mailroom_benchpg_$TAG"
NATS_PREFIX="bench$TAG."
STREAM="bench${TAG}_MAIL"
REDIS_PREFIX="mailroom-bench:$TAG:"
WORK="$(mktemp -d /tmp/mailroom-bench.XXXXXX)"
chmod 755 "$WORK" # nginx workers and smtp-sink run as nobody
mkdir -p "$OUT_DIR"

# Leftovers of interrupted runs more than two hours old (the name holds the start time).
now="$(date +%s)"
for old in $(admin_sql "SELECT datname FROM pg_database WHERE datname ~ '^mailroom_bench(pg)?_[0-9]+_'"); do
  started="$(sed -E 's/^mailroom_bench(pg)?_([0-9]+)_.*/\2/' <<<"$old")"
  if [ $((now - started)) -gt 7200 ]; then
    say "removing $old, left by an interrupted run"
    admin_sql "DROP DATABASE IF EXISTS \"$old\" WITH (FORCE)" || true
  fi
done

free_port() {
  local port
  while :; do
    port=$((20000 + RANDOM % 30000))
    port_open "$port" || { echo "$port"; return; }
  done
}
SMTP_PORT="$(free_port)"
NGINX_PORT="$(free_port)"
HTTP_PORT="$(free_port)"
GRPC_PORT="$(free_port)"
METRICS_PORT="$(free_port)"

# --- measuring helpers ------------------------------------------------------------------
CLK_TCK="$(getconf CLK_TCK)"

# CPU ticks of the whole machine and of the processes that matter, by command name.
cpu_snapshot() {
  awk '/^cpu /{print "machine_busy", $2+$3+$4+$7+$8+$9; print "machine_all", $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk '{
    lp = index($0, "("); rp = index($0, ") ")
    comm = substr($0, lp + 1, rp - lp - 1)
    split(substr($0, rp + 2), f, " ")
    if (comm ~ /^load-/) comm = "load"
    if (comm ~ /^(mailroom|postgres|nats-server|redis-server|smtp-sink|smtp-source|nginx|wrk|load|pgbench)$/)
      ticks[comm] += f[12] + f[13]
  } END { for (c in ticks) print c, ticks[c] }'
}

# JSON: cores used per process over the phase, and how busy the machine was.
cpu_delta() { # before after seconds
  awk -v secs="$3" -v tck="$CLK_TCK" '
    NR == FNR { before[$1] = $2; next }
    { after[$1] = $2 }
    END {
      busy = after["machine_busy"] - before["machine_busy"]; all = after["machine_all"] - before["machine_all"]
      printf "{\"machine_busy_pct\": %.1f", (all > 0 ? 100 * busy / all : 0)
      for (c in after) if (c !~ /^machine_/) {
        d = after[c] - before[c]; if (d < 0) d = 0
        printf ", \"%s_cores\": %.2f", c, d / tck / secs
      }
      print "}"
    }' "$1" "$2"
}

# Commits in the service's database and WAL syncs of the whole server.
pg_counters() {
  admin_sql "SELECT coalesce((SELECT xact_commit FROM pg_stat_database WHERE datname = '$DB'), 0),
                    coalesce((SELECT wal_sync FROM pg_stat_wal), 0)" | tr '|' ' '
}

# The service's histograms: count and sum of each series.
metrics_snapshot() {
  curl -sf "http://127.0.0.1:$METRICS_PORT/metrics" |
    awk '/^mailroom_[a-z_]+_(sum|count)[{ ]/ {
      name = $1; value = $2
      kind = (name ~ /_sum/) ? "sum" : "count"
      sub(/_(sum|count)/, "", name)
      print kind, name, value
    }'
}

# JSON: mean latency (ms) and count of each histogram series over the phase.
metrics_delta() { # before after
  awk '
    NR == FNR { before[$1 " " $2] = $3; next }
    { after[$1 " " $2] = $3; if ($1 == "count") names[$2] = 1 }
    END {
      sep = ""
      printf "{"
      for (n in names) {
        c = after["count " n] - before["count " n]
        if (c <= 0 || n !~ /duration/) continue
        s = after["sum " n] - before["sum " n]
        key = n; gsub(/"/, "\x27", key)
        printf "%s\"%s\": {\"count\": %d, \"mean_ms\": %.2f}", sep, key, c, 1000 * s / c
        sep = ", "
      }
      print "}"
    }' "$1" "$2"
}

RESULTS="$WORK/results.jsonl"
: >"$RESULTS"
record() { # name json
  jq -c --arg name "$1" '{($name): .}' <<<"$2" >>"$RESULTS"
}

# Runs a phase with CPU, PostgreSQL and metrics accounting around it; the command's
# stdout (one JSON object) is recorded under `name`, with the accounting added.
phase() { # name command...
  local name="$1"; shift
  local b="$WORK/cpu.before" a="$WORK/cpu.after" mb="$WORK/m.before" ma="$WORK/m.after"
  local pg_before pg_after started ended out
  cpu_snapshot >"$b"
  pg_before="$(pg_counters)"
  if [ -n "$SERVICE_PID" ]; then metrics_snapshot >"$mb"; fi
  started="$(date +%s.%N)"
  out="$("$@")" || fail "$name failed: $out"
  ended="$(date +%s.%N)"
  cpu_snapshot >"$a"
  pg_after="$(pg_counters)"
  local secs cpu metrics='{}'
  secs="$(awk -v s="$started" -v e="$ended" 'BEGIN{printf "%.3f", e - s}')"
  cpu="$(cpu_delta "$b" "$a" "$secs")"
  if [ -n "$SERVICE_PID" ]; then
    metrics_snapshot >"$ma"
    metrics="$(metrics_delta "$mb" "$ma")"
  fi
  read -r c0 s0 <<<"$pg_before"
  read -r c1 s1 <<<"$pg_after"
  record "$name" "$(jq -c --argjson cpu "$cpu" --argjson metrics "$metrics" --argjson secs "$secs" \
    --argjson commits "$(( ${c1:-0} - ${c0:-0} ))" --argjson wal_syncs "$(( ${s1:-0} - ${s0:-0} ))" \
    '. + {phase_secs: $secs, cpu: $cpu, db_commits: $commits, wal_syncs_server: $wal_syncs, service_histograms: $metrics}' <<<"$out")"
  say "$name: $(jq -c 'del(.terms)' <<<"$out")"
}

seconds_of() { # command... : prints {"secs": S} for a command that prints nothing useful
  local started ended
  started="$(date +%s.%N)"
  "$@" >"$WORK/cmd.out" 2>&1 || { cat "$WORK/cmd.out" >&2; return 1; }
  ended="$(date +%s.%N)"
  awk -v s="$started" -v e="$ended" 'BEGIN{printf "{\"secs\": %.3f}\n", e - s}'
}

wrk_run() { # url method body [prefer]  (the key comes from BENCH_KEY)
  BENCH_METHOD="$2" BENCH_BODY="$3" BENCH_PREFER="${4:-}" wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --timeout 10s \
    -s scripts/bench/wrk.lua "$1" | grep '^{"requests"'
}

RSS_PHASES="$WORK/rss.jsonl"
: >"$RSS_PHASES"
service_hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$SERVICE_PID/status"; }
note_rss() { # after-which-phase
  jq -nc --arg p "$1" --argjson kib "$(service_hwm_kib)" '{($p): ($kib / 1024 | floor)}' >>"$RSS_PHASES"
}

# Waits until the service has delivered everything queued so far, so a phase does not
# pay for the previous one's deliveries.
drain() {
  local i left
  for ((i = 0; i < 1800; i++)); do
    left="$(psql "$PG/$DB" -qtAc "SELECT count(*) FROM emails WHERE status IN ('queued', 'sending', 'deferred')")"
    [ "$left" = 0 ] && return 0
    sleep 0.2
  done
  fail "deliveries did not drain: $left emails still pending after 6 minutes"
}

say "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg)"

# --- limits -----------------------------------------------------------------------------
# The machine's own limits are measured twice, before the service starts and after it
# stops (phases named with the suffix _after), and each ratio divides by the higher of
# the two: a limit measured while the host was busy would flatter the service.

# PostgreSQL
pgbench_run() { # clients
  pgbench -n -c "$1" -j 2 -T "$PGBENCH_SECS" -f scripts/bench/pgbench-insert.sql "$PG/$PGBENCH_DB" 2>&1 |
    awk -v c="$1" '/^tps = / {tps = $3} /latency average/ {lat = $4}
      END { if (tps == "") exit 1; printf "{\"clients\": %d, \"tps\": %.1f, \"latency_ms\": %.3f}\n", c, tps, lat }'
}
pgbench_limits() { # phase-name-suffix
  say "pgbench: single-row INSERTs into a scratch emails table"
  admin_sql "CREATE DATABASE \"$PGBENCH_DB\""
  cat migrations/*.up.sql | psql "$PG/$PGBENCH_DB" -v ON_ERROR_STOP=1 -q
  phase "pgbench_c8$1" pgbench_run 8
  phase "pgbench_c64$1" pgbench_run 64
  admin_sql "DROP DATABASE \"$PGBENCH_DB\" WITH (FORCE)"
}

# SMTP: the sink stays up for the service's deliveries.
if [ "$(id -u)" -eq 0 ]; then sink_user=(-u nobody); else sink_user=(); fi
# A free port can be taken between free_port and the bind (seen: "Address already in
# use"), so a sink that cannot bind is started again on another one.
for ((try = 1; ; try++)); do
  smtp-sink "${sink_user[@]}" 127.0.0.1:"$SMTP_PORT" 1000 >"$WORK/smtp-sink.log" 2>&1 &
  SINK_PID=$!
  for ((i = 0; i < 150; i++)); do
    kill -0 "$SINK_PID" 2>/dev/null || break
    port_open "$SMTP_PORT" && break
    sleep 0.1
  done
  kill -0 "$SINK_PID" 2>/dev/null && port_open "$SMTP_PORT" && break
  kill "$SINK_PID" 2>/dev/null || true
  ((try < 5)) || fail "smtp-sink did not start on port $SMTP_PORT: $(tail -n 5 "$WORK/smtp-sink.log")"
  SMTP_PORT="$(free_port)"
done
smtp_run() { # extra flags...
  local result
  result="$(seconds_of smtp-source "$@" -s "$SMTP_SESSIONS" -m "$SMTP_MESSAGES" -l 400 \
    -f bench@example.com -t rcpt@example.com 127.0.0.1:"$SMTP_PORT")" || return 1
  jq -c --argjson n "$SMTP_MESSAGES" --argjson s "$SMTP_SESSIONS" \
    '{messages: $n, sessions: $s, secs: .secs, msg_per_s: ($n / .secs)}' <<<"$result"
}
smtp_limits() { # phase-name-suffix
  say "smtp-source -> smtp-sink on 127.0.0.1:$SMTP_PORT"
  phase "smtp_new_connection$1" smtp_run
  phase "smtp_reused_connection$1" smtp_run -d
  [ "$ATTACHMENT_COUNT" -gt 0 ] && phase "smtp_attachment_new_connection$1" smtp_attachment_run
  return 0
}
# Messages of 100 KB (the size of an email with a 100 KB attachment, near enough), a new
# connection each: the limit of the end-to-end run with attachments.
smtp_attachment_run() {
  local result
  result="$(seconds_of smtp-source -s "$SMTP_SESSIONS" -m "$ATTACHMENT_COUNT" -l 102400 \
    -f bench@example.com -t rcpt@example.com 127.0.0.1:"$SMTP_PORT")" || return 1
  jq -c --argjson n "$ATTACHMENT_COUNT" --argjson s "$SMTP_SESSIONS" \
    '{messages: $n, sessions: $s, bytes: 102400, secs: .secs, msg_per_s: ($n / .secs)}' <<<"$result"
}

# HTTP
mkdir -p "$WORK/nginx/www"
# About the size of an email as GET /api/v1/email/{id} returns it.
jq -nc '{emailID: "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b", from: "bench@example.com",
  to: "rest@example.com", subject: "Bench REST", message: ("x" * 230), html: null,
  createdAt: "2026-11-26T21:00:00Z", updatedAt: "2026-11-26T21:00:01Z", status: "sent",
  attempts: 1, sentAt: "2026-11-26T21:00:01Z", lastError: null, nextAttemptAt: null,
  idempotencyKey: null}' >"$WORK/nginx/www/email.json"
sed -e "s|@DIR@|$WORK/nginx|g" -e "s|@PORT@|$NGINX_PORT|g" scripts/bench/nginx.conf >"$WORK/nginx/nginx.conf"
nginx_limits() { # phase-name-suffix
  say "wrk -> nginx (static file) on 127.0.0.1:$NGINX_PORT"
  nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" -e "$WORK/nginx/nginx-error.log" >"$WORK/nginx/out.log" 2>&1 &
  NGINX_PID=$!
  for ((i = 0; i < 50; i++)); do port_open "$NGINX_PORT" && break; sleep 0.1; done
  port_open "$NGINX_PORT" || fail "nginx did not start: $(cat "$WORK/nginx/"*.log)"
  phase "nginx_static$1" wrk_run "http://127.0.0.1:$NGINX_PORT/email.json" GET ""
  stop_pid "$NGINX_PID" 10
  NGINX_PID=""
}

if [ "$ONLY" != service ]; then
  pgbench_limits ""
  smtp_limits ""
  nginx_limits ""
fi

# --- mailroom ---------------------------------------------------------------------------
say "starting mailroom (database $DB, NATS prefix $NATS_PREFIX)"
"$BIN" certs --dir "$WORK/certs" >/dev/null
MAILROOM_ENV=local \
  MAILROOM__HTTP__ADDR="127.0.0.1:$HTTP_PORT" \
  MAILROOM__GRPC__ADDR="127.0.0.1:$GRPC_PORT" \
  MAILROOM__METRICS__ADDR="127.0.0.1:$METRICS_PORT" \
  MAILROOM__GRPC__TLS_CERT="$WORK/certs/server.crt" \
  MAILROOM__GRPC__TLS_KEY="$WORK/certs/server.key" \
  MAILROOM__DATABASE__URL="$PG/$DB" \
  MAILROOM__NATS__URL="$NATS_URL" \
  MAILROOM__NATS__PREFIX="$NATS_PREFIX" \
  MAILROOM__REDIS__URL="$REDIS_URL" \
  MAILROOM__REDIS__KEY_PREFIX="$REDIS_PREFIX" \
  MAILROOM__SMTP__HOST=127.0.0.1 \
  MAILROOM__SMTP__PORT="$SMTP_PORT" \
  MAILROOM__AUTH__RATE_LIMIT__PER_SECOND=10000000 \
  MAILROOM__AUTH__RATE_LIMIT__BURST=10000000 \
  MAILROOM__TELEMETRY__OTLP_ENDPOINT="" \
  MAILROOM__TELEMETRY__LOG_FORMAT=json \
  MAILROOM__TELEMETRY__LOG_FILTER=warn \
  RUST_LOG=warn \
  "$BIN" serve >"$WORK/service.log" 2>&1 &
SERVICE_PID=$!
for ((i = 0; i < 300; i++)); do
  curl -sf "http://127.0.0.1:$HTTP_PORT/ready" >/dev/null && break
  kill -0 "$SERVICE_PID" 2>/dev/null || fail "mailroom exited: $(tail -n 20 "$WORK/service.log")"
  sleep 0.1
done
curl -sf "http://127.0.0.1:$HTTP_PORT/ready" >/dev/null || fail "mailroom is not ready: $(tail -n 20 "$WORK/service.log")"
note_rss idle

perf_start() { # name
  local target=(-p "$SERVICE_PID")
  case "${BENCH_PERF:-0}" in
    1) ;;
    system) target=(-a) ;;
    *) return 0 ;;
  esac
  perf record -e cpu-clock -F 499 -g "${target[@]}" -o "$OUT_DIR/perf-$1.data" >/dev/null 2>&1 &
  PERF_PID=$!
}
perf_stop() {
  [ -n "${PERF_PID:-}" ] || return 0
  kill -INT "$PERF_PID" 2>/dev/null; wait "$PERF_PID" 2>/dev/null || true
  PERF_PID=""
}

say "end to end: $E2E_COUNT create events on ${NATS_PREFIX}mail:create -> sent"
perf_start e2e
phase e2e "$LOAD" --bench publish --nats "$NATS_URL" --subject "${NATS_PREFIX}mail:create" \
  --count "$E2E_COUNT" --database "$PG/$DB" --tag "e2e-$TAG"
perf_stop
note_rss e2e

if [ "$ATTACHMENT_COUNT" -gt 0 ]; then
  say "end to end with attachments: $ATTACHMENT_COUNT create events with 100 KB each -> sent"
  phase e2e_attachment "$LOAD" --bench publish --nats "$NATS_URL" --subject "${NATS_PREFIX}mail:create" \
    --count "$ATTACHMENT_COUNT" --database "$PG/$DB" --tag "e2e-attachment-$TAG" --attachment-bytes 102400
  note_rss e2e_attachment
fi

say "REST POST /api/v1/email, wrk c=$CONNECTIONS for ${DURATION}s"
export BENCH_KEY="$KEY"
POST_BODY="$(jq -nc '{from: "bench@example.com", to: "rest@example.com", subject: "Bench REST",
  message: "Hello, this is a message of the mailroom benchmark. Your order has shipped and will arrive within three working days. Thank you."}')"
perf_start rest_post
phase rest_post wrk_run "http://127.0.0.1:$HTTP_PORT/api/v1/email" POST "$POST_BODY"
perf_stop
note_rss rest_post
drain

# Not a goal: the original service's path (validate, publish to mail:create, 202), which
# takes PostgreSQL and Redis out of the request and so shows what they cost in the POST.
say "REST POST /api/v1/email with Prefer: respond-async"
phase rest_post_async wrk_run "http://127.0.0.1:$HTTP_PORT/api/v1/email" POST "$POST_BODY" respond-async
drain

say "REST GET /api/v1/email/{id} from the cache"
EMAIL_ID="$(curl -sf "http://127.0.0.1:$HTTP_PORT/api/v1/email" -H "Authorization: Bearer $KEY" \
  -H 'Content-Type: application/json' -d "$POST_BODY" | jq -r .emailID)"
drain
curl -sf "http://127.0.0.1:$HTTP_PORT/api/v1/email/$EMAIL_ID" -H "Authorization: Bearer $KEY" >/dev/null
perf_start rest_get_cached
phase rest_get_cached wrk_run "http://127.0.0.1:$HTTP_PORT/api/v1/email/$EMAIL_ID" GET ""
perf_stop
note_rss rest_get

say "gRPC GetByID and Create, $CONNECTIONS calls in flight over 4 TLS connections"
grpc_run() { # method
  "$LOAD" --bench grpc --addr "https://127.0.0.1:$GRPC_PORT" --ca "$WORK/certs/ca.crt" --key "$KEY" \
    --method "$1" --id "$EMAIL_ID" --connections 4 --concurrency "$CONNECTIONS" --duration-secs "$DURATION"
}
perf_start grpc_get
phase grpc_get grpc_run get
perf_stop
perf_start grpc_create
phase grpc_create grpc_run create
perf_stop
note_rss grpc
drain

existing="$(psql "$PG/$DB" -qtAc "SELECT count(*) FROM emails")"
to_load=$((SEARCH_ROWS - existing))
say "search: loading $to_load rows to reach $SEARCH_ROWS"
# The indexes the table's content costs most to keep while loading: dropped, then made
# again as the migrations define them (read back from the catalogue, so a change to an
# index's definition needs no change here).
LOAD_INDEXES="'email_messages_search_idx', 'email_messages_sender_idx'"
load_rows() {
  local half=$((to_load / 2)) definitions
  definitions="$(psql "$PG/$DB" -qtAc "SELECT string_agg(indexdef, E';\n') || ';' FROM pg_indexes
    WHERE tablename = 'email_messages' AND indexname IN ($LOAD_INDEXES)")"
  psql "$PG/$DB" -v ON_ERROR_STOP=1 -qtAc "SELECT format('DROP INDEX %I;', indexname) FROM pg_indexes
    WHERE tablename = 'email_messages' AND indexname IN ($LOAD_INDEXES)" | psql "$PG/$DB" -v ON_ERROR_STOP=1 -q
  psql "$PG/$DB" -v ON_ERROR_STOP=1 -q -v first=1 -v last="$half" -f scripts/bench/search-data.sql >/dev/null &
  local first_half=$!
  psql "$PG/$DB" -v ON_ERROR_STOP=1 -q -v first=$((half + 1)) -v last="$to_load" -f scripts/bench/search-data.sql >/dev/null
  wait "$first_half"
  psql "$PG/$DB" -v ON_ERROR_STOP=1 -q <<SQL
SET maintenance_work_mem = '256MB';
$definitions
VACUUM ANALYZE email_messages, email_deliveries;
SQL
}
load_rows_timed() {
  seconds_of load_rows | jq -c --argjson rows "$to_load" '. + {rows_loaded: $rows, rows_per_s: ($rows / .secs)}'
}
if [ "$ONLY" = service ]; then
  # The service's phases only: search runs on the rows they made, briefly.
  to_load=0
  SEARCH_ROWS="$existing"
  SEARCH_ROUNDS=3
fi
[ "$to_load" -gt 0 ] && phase search_load load_rows_timed
# Realistic searches: common and rare words, a subject phrase, a domain, one recipient
# (about one row), a web-search expression, and the empty search (every email).
phase search "$LOAD" --bench search --url "http://127.0.0.1:$HTTP_PORT" --key "$KEY" \
  --rounds "$SEARCH_ROUNDS" \
  --term "invoice" --term "walrus" --term '"password reset"' --term "acme.test" \
  --term "user4242@example.com" --term "refund -payment" --term ""
note_rss search
# The listing's filters alone and combined, each first page and then pages deep by
# cursor: a common and a rare status (and one no email has by then: queued), tag,
# recipient and sender, a time range, words.
# BENCH_LIST_ROUNDS=0 leaves it out (a binary from before the listing has none).
if [ "$LIST_ROUNDS" -gt 0 ]; then
LIST_AFTER="$(date -u -d '-90 days' +%Y-%m-%dT%H:%M:%SZ)"
LIST_BEFORE="$(date -u -d '-30 days' +%Y-%m-%dT%H:%M:%SZ)"
phase list "$LOAD" --bench list --url "http://127.0.0.1:$HTTP_PORT" --key "$KEY" \
  --rounds "$LIST_ROUNDS" --deep-pages "$((LIST_ROUNDS * 2))" \
  --query "limit=20" --query "status=sent" --query "status=failed" --query "status=queued" \
  --query "tag=campaign:spring-3" --query "tag=plan:enterprise" \
  --query "to=user4242@example.com" --query "to=rest@example.com" \
  --query "from=noreply@shop.example" --query "from=nobody@nowhere.example" \
  --query "createdAfter=$LIST_AFTER&createdBefore=$LIST_BEFORE" \
  --query "search=invoice" --query "search=walrus&status=sent&limit=100" \
  --query "search=refund&tag=campaign:spring-3&createdBefore=$LIST_BEFORE"
note_rss list
fi

# The end-to-end phase again, on top of the rows above: what the indexes that serve
# search and the listing cost every insert and status change on a large table.
if [ "$ONLY" != service ]; then
  say "end to end again on $SEARCH_ROWS rows: $E2E_COUNT create events -> sent"
  phase e2e_loaded "$LOAD" --bench publish --nats "$NATS_URL" --subject "${NATS_PREFIX}mail:create" \
    --count "$E2E_COUNT" --database "$PG/$DB" --tag "e2e-loaded-$TAG"
  note_rss e2e_loaded
fi

HWM_MIB="$(($(service_hwm_kib) / 1024))"
stop_pid "$SERVICE_PID" 40
SERVICE_PID=""
grep -E '"level":"(ERROR|WARN)"' "$WORK/service.log" | tail -n 5 >"$WORK/service-warnings.log" || true

if [ "$ONLY" != service ]; then
  pgbench_limits _after
  smtp_limits _after
  nginx_limits _after
fi

# --- report -----------------------------------------------------------------------------
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
JSON="$OUT_DIR/bench-$STAMP.json"
jq -s --arg load_start "$LOAD_START" --arg load_end "$(cut -d' ' -f1-3 /proc/loadavg)" \
  --argjson hwm "$HWM_MIB" --slurpfile rss "$RSS_PHASES" --arg commit "$(git rev-parse --short HEAD)" \
  --arg stamp "$STAMP" --argjson search_rows "$SEARCH_ROWS" --arg warnings "$(cat "$WORK/service-warnings.log")" \
  --arg binary "$BIN" --arg only "$ONLY" '
  add as $r |
  def ratio($a; $b): if ($a | type) == "number" and ($b | type) == "number" then $a / $b else null end;
  def at_least($x; $goal): if $x == null then null else $x >= $goal end;
  def pair($k): [$r[$k].msg_per_s // $r[$k].tps // $r[$k].req_per_s, $r[$k + "_after"].msg_per_s // $r[$k + "_after"].tps // $r[$k + "_after"].req_per_s];
  {
    stamp: $stamp, commit: $commit, binary: $binary, only: $only, search_rows: $search_rows, cores: '"$(nproc)"',
    load_average_start: $load_start, load_average_end: $load_end,
    figures: {
      e2e_emails_per_s: $r.e2e.emails_per_s,
      e2e_attachment_emails_per_s: $r.e2e_attachment.emails_per_s,
      rest_post_req_per_s: $r.rest_post.req_per_s,
      rest_post_p50_ms: $r.rest_post.p50_ms,
      rest_post_p99_ms: $r.rest_post.p99_ms,
      rest_post_non_2xx: $r.rest_post.non_2xx_3xx,
      rest_post_async_req_per_s: $r.rest_post_async.req_per_s,
      rest_get_cached_req_per_s: $r.rest_get_cached.req_per_s,
      rest_get_cached_p99_ms: $r.rest_get_cached.p99_ms,
      grpc_get_req_per_s: $r.grpc_get.req_per_s,
      grpc_create_req_per_s: $r.grpc_create.req_per_s,
      search_p50_ms: $r.search.p50_ms,
      search_p99_ms: $r.search.p99_ms,
      list_p50_ms: $r.list.p50_ms,
      list_p99_ms: $r.list.p99_ms,
      list_deep_p99_ms: $r.list.deep_p99_ms,
      e2e_loaded_emails_per_s: $r.e2e_loaded.emails_per_s,
      peak_rss_mib: $hwm
    },
    limits_before_after: {
      pgbench_c8_tps: pair("pgbench_c8"),
      pgbench_c64_tps: pair("pgbench_c64"),
      smtp_new_connection_msg_per_s: pair("smtp_new_connection"),
      smtp_reused_connection_msg_per_s: pair("smtp_reused_connection"),
      smtp_attachment_new_connection_msg_per_s: pair("smtp_attachment_new_connection"),
      nginx_static_req_per_s: pair("nginx_static")
    },
    peak_rss_mib_after: ($rss | add),
    service_warnings: $warnings,
    phases: $r
  } |
  # Each limit is the higher of its two rounds.
  .figures = (.limits_before_after | map_values(max)) + .figures |
  .ratios = {
    e2e_over_smtp_new_connection: ratio(.figures.e2e_emails_per_s; .figures.smtp_new_connection_msg_per_s),
    e2e_attachment_over_smtp_100kb_new_connection: ratio(.figures.e2e_attachment_emails_per_s; .figures.smtp_attachment_new_connection_msg_per_s),
    e2e_over_pgbench_c8: ratio(.figures.e2e_emails_per_s; .figures.pgbench_c8_tps),
    e2e_loaded_over_e2e: ratio(.figures.e2e_loaded_emails_per_s; .figures.e2e_emails_per_s),
    rest_post_over_pgbench_c64: ratio(.figures.rest_post_req_per_s; .figures.pgbench_c64_tps),
    rest_get_cached_over_nginx: ratio(.figures.rest_get_cached_req_per_s; .figures.nginx_static_req_per_s)
  } |
  .goals = {
    e2e_over_smtp_new_connection_ge_0_5: at_least(.ratios.e2e_over_smtp_new_connection; 0.5),
    e2e_over_smtp_new_connection_ge_1_0_moonshot: at_least(.ratios.e2e_over_smtp_new_connection; 1.0),
    rest_post_over_pgbench_c64_ge_0_5: at_least(.ratios.rest_post_over_pgbench_c64; 0.5),
    rest_get_cached_over_nginx_ge_0_5: at_least(.ratios.rest_get_cached_over_nginx; 0.5),
    search_p99_lt_50_ms: (.figures.search_p99_ms < 50),
    list_p99_lt_50_ms: (if .figures.list_p99_ms == null then null else .figures.list_p99_ms < 50 and .figures.list_deep_p99_ms < 50 end),
    e2e_loaded_within_15_percent: at_least(.ratios.e2e_loaded_over_e2e; 0.85),
    peak_rss_lt_128_mib: (.figures.peak_rss_mib < 128),
    rest_post_no_non_2xx: (.figures.rest_post_non_2xx == 0)
  }' "$RESULTS" >"$JSON"
cp "$JSON" "$OUT_DIR/latest.json"

jq -r '
  def n: if type == "number" then (. * 10 | round / 10 | tostring) else tostring end;
  def r: if type == "number" then (. * 100 | round / 100 | tostring) else tostring end;
  def ok: if . == null then "not measured" elif . then "met" else "NOT met" end;
  # A limit: the figure the ratios use, then its two rounds.
  def limit($k; $unit): "\(.figures[$k] | n) \($unit) (before \(.limits_before_after[$k][0] | n), after \(.limits_before_after[$k][1] | n))";
  "",
  "mailroom bench \(.stamp) (commit \(.commit), \(.cores) cores, load average \(.load_average_start) -> \(.load_average_end))",
  "",
  "| figure | value |", "|---|---|",
  "| pgbench single-row INSERT, c=8 | \(limit("pgbench_c8_tps"; "tps")) |",
  "| pgbench single-row INSERT, c=64 | \(limit("pgbench_c64_tps"; "tps")) |",
  "| smtp-source -> smtp-sink, new connection per message | \(limit("smtp_new_connection_msg_per_s"; "msg/s")) |",
  "| smtp-source -> smtp-sink, connections reused | \(limit("smtp_reused_connection_msg_per_s"; "msg/s")) |",
  "| smtp-source -> smtp-sink, 100 KB messages, new connection per message | \(limit("smtp_attachment_new_connection_msg_per_s"; "msg/s")) |",
  "| wrk -> nginx static file, c=64 | \(limit("nginx_static_req_per_s"; "req/s")) |",
  "| end to end, \(.phases.e2e.count) create events -> sent | \(.figures.e2e_emails_per_s | n) emails/s |",
  "| end to end, \(.phases.e2e_attachment.count) create events with a 100 KB attachment -> sent | \(.figures.e2e_attachment_emails_per_s | n) emails/s |",
  "| REST POST /api/v1/email, c=64 | \(.figures.rest_post_req_per_s | n) req/s, p50 \(.figures.rest_post_p50_ms | n) ms, p99 \(.figures.rest_post_p99_ms | n) ms, non-2xx \(.figures.rest_post_non_2xx) |",
  "| REST POST with Prefer: respond-async (202), c=64 | \(.figures.rest_post_async_req_per_s | n) req/s |",
  "| REST GET /api/v1/email/{id}, cached, c=64 | \(.figures.rest_get_cached_req_per_s | n) req/s, p99 \(.figures.rest_get_cached_p99_ms | n) ms |",
  "| gRPC GetByID, 64 in flight | \(.figures.grpc_get_req_per_s | n) req/s |",
  "| gRPC Create, 64 in flight | \(.figures.grpc_create_req_per_s | n) req/s |",
  "| search on \(.search_rows) rows, one query at a time | p50 \(.figures.search_p50_ms | n) ms, p99 \(.figures.search_p99_ms | n) ms |",
  "| list on \(.search_rows) rows, first pages / pages deep by cursor | p50 \(.figures.list_p50_ms | n) ms, p99 \(.figures.list_p99_ms | n) ms / p99 \(.figures.list_deep_p99_ms | n) ms |",
  "| end to end again on top of \(.search_rows) rows | \(.figures.e2e_loaded_emails_per_s | n) emails/s |",
  "| service peak RSS (VmHWM) | \(.figures.peak_rss_mib) MiB |",
  "",
  "| goal | ratio or figure | |", "|---|---|---|",
  "| end to end / smtp new connection >= 0.5 (moonshot 1.0) | \(.ratios.e2e_over_smtp_new_connection | r) | \(.goals.e2e_over_smtp_new_connection_ge_0_5 | ok) |",
  "| end to end / pgbench c=8 (reported) | \(.ratios.e2e_over_pgbench_c8 | r) | |",
  "| end to end with 100 KB attachments / smtp-source -l 102400 new connection (reported) | \(.ratios.e2e_attachment_over_smtp_100kb_new_connection | r) | |",
  "| REST POST / pgbench c=64 >= 0.5 | \(.ratios.rest_post_over_pgbench_c64 | r) | \(.goals.rest_post_over_pgbench_c64_ge_0_5 | ok) |",
  "| REST cached GET / nginx static >= 0.5 | \(.ratios.rest_get_cached_over_nginx | r) | \(.goals.rest_get_cached_over_nginx_ge_0_5 | ok) |",
  "| search p99 < 50 ms | \(.figures.search_p99_ms | n) ms | \(.goals.search_p99_lt_50_ms | ok) |",
  "| list p99 < 50 ms, first and deep pages | \(.figures.list_p99_ms | n) / \(.figures.list_deep_p99_ms | n) ms | \(.goals.list_p99_lt_50_ms | ok) |",
  "| end to end on \(.search_rows) rows / end to end >= 0.85 | \(.ratios.e2e_loaded_over_e2e | r) | \(.goals.e2e_loaded_within_15_percent | ok) |",
  "| peak RSS < 128 MiB | \(.figures.peak_rss_mib) MiB | \(.goals.peak_rss_lt_128_mib | ok) |",
  "",
  "search per term (p50 / p99 ms, matches):",
  (.phases.search.terms[] | "  \(.term | tojson): \(.p50_ms | n) / \(.p99_ms | n), \(.total_count)"),
  "",
  "list per query (first page p50 / p99 ms, deep pages p99 ms, emails listed):",
  (.phases.list.per_query[]? | "  \(.query): \(.p50_ms | n) / \(.p99_ms | n), deep \(.deep_p99_ms | n), \(.emails_listed_by_cursor)"),
  ""' "$JSON"
say "wrote $JSON"
