#!/usr/bin/env bash
# Fuzzes the REST API with schemathesis (`make fuzz`; `make test` runs it too). Starts the
# mailroom binary on free ports, isolated like the integration tests (a database, NATS
# prefix and Redis prefix of its own), runs schemathesis against the OpenAPI document it
# serves, with the test profile's API key so the requests reach the handlers, then stops
# it and removes what it created. Any finding fails the run.
#
# Settings: scripts/schemathesis.toml. Report: $CARGO_TARGET_DIR/test-artifacts/schemathesis/
# (JUnit XML, a HAR file of every request and answer, the console output, mailroom's log).
# FUZZ_SEED=N changes the seed; FUZZ_MAX_EXAMPLES=N the number of cases per operation;
# arguments are passed on to `st run` (e.g. `scripts/fuzz.sh --checks all` to explore).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

# Pinned, with everything it pulls in, in scripts/fuzz-requirements.txt.
SCHEMATHESIS_VERSION=4.32.5
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mailroom/target}"
TOOLS_DIR="${MAILROOM_TOOLS_DIR:-$HOME/.cache/mailroom/tools}"
VENV="$TOOLS_DIR/schemathesis-$SCHEMATHESIS_VERSION"
REPORT_DIR="${FUZZ_REPORT_DIR:-$CARGO_TARGET_DIR/test-artifacts/schemathesis}"
ADMIN_URL="${MAILROOM_TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
NATS_URL="${MAILROOM__NATS__URL:-nats://127.0.0.1:4222}"
REDIS_URL="${MAILROOM__REDIS__URL:-redis://127.0.0.1:6379}"
SEED="${FUZZ_SEED:-20261126}"
# The key the `test` profile accepts (config/test.yaml).
API_KEY=test-key

say() { printf 'fuzz: %s\n' "$*"; }
fail() { printf 'fuzz: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi
}

started=$SECONDS

# --- schemathesis, in a venv of its own outside the clone ----------------------------
requirements=scripts/fuzz-requirements.txt
if ! cmp -s "$requirements" "$VENV/.requirements.txt" || [ ! -x "$VENV/bin/st" ]; then
  say "installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
  command -v python3 >/dev/null || fail "python3 is needed (Debian: apt-get install python3 python3-venv)"
  rm -rf "$VENV"
  mkdir -p "$TOOLS_DIR"
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    # Debian's python3 has no venv module without python3-venv.
    rm -rf "$VENV"
    command -v apt-get >/dev/null || fail "python3 -m venv fails; install Python's venv module"
    say "installing python3-venv with apt-get"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null ||
      { as_root apt-get update -q >/dev/null &&
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null; } ||
      fail "could not install python3-venv"
    python3 -m venv "$VENV" || fail "python3 -m venv fails even with python3-venv"
  fi
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$requirements" ||
    { rm -rf "$VENV"; fail "could not install schemathesis from PyPI"; }
  cp "$requirements" "$VENV/.requirements.txt"
fi
"$VENV/bin/st" --version | grep -qF "$SCHEMATHESIS_VERSION" ||
  fail "$VENV/bin/st is not schemathesis $SCHEMATHESIS_VERSION; remove $VENV and run again"

# --- mailroom, isolated, on free ports -----------------------------------------------
cargo build --quiet --locked --bin mailroom
bin="$CARGO_TARGET_DIR/debug/mailroom"

mkdir -p "$REPORT_DIR"
rm -rf "${REPORT_DIR:?}"/*
work="$(mktemp -d)"
tag="$(date +%s)_$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"
database="mailroom_fuzz_$tag"
nats_prefix="fuzz_$tag."
stream="fuzz_${tag}_MAIL" # the prefix made a valid stream name, then the stream's name
redis_prefix="mailroom-fuzz:$tag:"
pid=

clean_up() {
  local status=$?
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  if command -v psql >/dev/null; then
    psql "$ADMIN_URL" -qX -c "DROP DATABASE IF EXISTS \"$database\" WITH (FORCE)" >/dev/null ||
      say "warning: could not drop the database $database"
  else
    say "warning: psql is missing; drop the database $database by hand"
  fi
  "$VENV/bin/python" - "$NATS_URL" "$stream" <<'EOF' || say "warning: could not delete the stream $stream"
# Deletes the run's JetStream stream with the JetStream API over the plain NATS protocol.
import socket, sys, urllib.parse
url, stream = urllib.parse.urlparse(sys.argv[1]), sys.argv[2]
conn = socket.create_connection((url.hostname or "127.0.0.1", url.port or 4222), timeout=5)
reader = conn.makefile("rb")
reader.readline()  # INFO
inbox = "_INBOX.mailroom-fuzz"
conn.sendall(b'CONNECT {"verbose":false}\r\n'
             + f"SUB {inbox} 1\r\nPUB $JS.API.STREAM.DELETE.{stream} {inbox} 0\r\n\r\n".encode())
while True:
    line = reader.readline()
    if not line or line.startswith(b"-ERR"):
        sys.exit(f"NATS: {line!r}")
    if line.startswith(b"PING"):
        conn.sendall(b"PONG\r\n")
    elif line.startswith(b"MSG"):
        reply = reader.read(int(line.split()[-1]))
        sys.exit(0 if b'"success":true' in reply or b"not found" in reply else reply.decode())
EOF
  if command -v redis-cli >/dev/null; then
    redis-cli -u "$REDIS_URL" --scan --pattern "$redis_prefix*" | xargs -r redis-cli -u "$REDIS_URL" del >/dev/null ||
      say "warning: could not delete the Redis keys $redis_prefix*"
  fi
  rm -rf "$work"
  exit "$status"
}
trap clean_up EXIT

"$bin" certs --dir "$work/certs" >/dev/null
# SMTP goes to a port nothing listens on: fuzzed emails are stored and their delivery
# fails (deferred, then failed), which puts those states in the answers too, and none
# of them reaches the shared maildev.
smtp_port="$("$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"

# The rate limit is lifted so that every request reaches a handler; 429 is tested by
# the integration tests. So is the bound on scheduling ahead: any date-time the schema
# allows is then a valid `scheduledAt` (the bound is tested by the integration tests).
env MAILROOM_ENV=test \
  MAILROOM__DATABASE__URL="${ADMIN_URL%/*}/$database" \
  MAILROOM__NATS__URL="$NATS_URL" \
  MAILROOM__NATS__PREFIX="$nats_prefix" \
  MAILROOM__REDIS__URL="$REDIS_URL" \
  MAILROOM__REDIS__KEY_PREFIX="$redis_prefix" \
  MAILROOM__HTTP__ADDR=127.0.0.1:0 \
  MAILROOM__GRPC__ADDR=127.0.0.1:0 \
  MAILROOM__METRICS__ADDR=127.0.0.1:0 \
  MAILROOM__GRPC__TLS_CERT="$work/certs/server.crt" \
  MAILROOM__GRPC__TLS_KEY="$work/certs/server.key" \
  MAILROOM__SMTP__HOST=127.0.0.1 \
  MAILROOM__SMTP__PORT="$smtp_port" \
  MAILROOM__AUTH__RATE_LIMIT__PER_SECOND=1000000 \
  MAILROOM__AUTH__RATE_LIMIT__BURST=1000000 \
  MAILROOM__LIMITS__MAX_SCHEDULE_AHEAD=36500d \
  MAILROOM__TELEMETRY__LOG_FORMAT=json \
  RUST_LOG="warn,mailroom::startup=info" \
  "$bin" serve >"$REPORT_DIR/mailroom.log" 2>&1 &
pid=$!

addr=
for _ in $(seq 600); do
  addr="$(grep -F '"REST API listening"' "$REPORT_DIR/mailroom.log" | grep -o '"addr":"[^"]*"' | cut -d'"' -f4 || true)"
  [ -n "$addr" ] && break
  kill -0 "$pid" 2>/dev/null || { tail -n 20 "$REPORT_DIR/mailroom.log" >&2; fail "mailroom stopped at start"; }
  sleep 0.1
done
[ -n "$addr" ] || fail "mailroom did not listen within 60 s (log: $REPORT_DIR/mailroom.log)"
say "mailroom is up on http://$addr (database $database); running schemathesis $SCHEMATHESIS_VERSION"

# What the operations on one email or delivery need to get past 404 (scripts/
# schemathesis.toml): an email with attachments, two scheduled emails (one to cancel,
# one to reschedule), a webhook endpoint with a failed delivery (to retry; its URL
# is a port nothing listens on, so every attempt fails at once), two templates (one
# to read, change and render, one to delete) and two suppression-list entries (one to
# read, one to delete).
fixtures="$("$VENV/bin/python" - "http://$addr" "$API_KEY" "$smtp_port" <<'EOF'
import json, sys, time, urllib.request
base, key, closed_port = sys.argv[1], sys.argv[2], sys.argv[3]

def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data, method=method, headers={
        "Content-Type": "application/json", "Authorization": "Bearer " + key})
    return json.load(urllib.request.urlopen(request))

def email(subject, **extra):
    return call("POST", "/api/v1/email", {"from": "fuzz@example.com", "to": "fuzz@example.com",
                                          "subject": subject, "message": "for the fuzzer", **extra})

webhook = call("POST", "/api/v1/webhooks",
               {"url": f"http://127.0.0.1:{closed_port}/hook", "events": ["email.scheduled"]})
print("FUZZ_ATTACHMENT_EMAIL=" + email("attachments", attachments=[
    {"filename": "a.txt", "content": "aGVsbG8="}, {"filename": "b.pdf", "content": "JVBERi0xLjQK"}])["emailID"])
print("FUZZ_CANCEL_EMAIL=" + email("to cancel", scheduledAt="2099-01-01T00:00:00Z")["emailID"])
print("FUZZ_RESCHEDULE_EMAIL=" + email("to reschedule", scheduledAt="2099-01-01T00:00:00Z")["emailID"])
for _ in range(300):
    deliveries = call("GET", f"/api/v1/webhooks/{webhook['id']}/deliveries")["deliveries"]
    failed = [d for d in deliveries if d["status"] == "failed"]
    if failed:
        break
    time.sleep(0.1)
else:
    sys.exit("no webhook delivery failed within 30 s")
# "welcome" is the schema example's name, which the examples and coverage phases send.
for name in ("welcome", "fuzz-delete"):
    call("POST", "/api/v1/templates", {"name": name, "subject": "fuzz {{ name | default('you') }}",
                                      "message": "hello {{ name | default('you') }}"})
for address in ("fuzz-read@example.com", "fuzz-delete@example.com"):
    call("POST", "/api/v1/suppressions", {"address": address, "reason": "manual"})
print("FUZZ_SUPPRESSION=fuzz-read@example.com")
print("FUZZ_SUPPRESSION_DELETE=fuzz-delete@example.com")
print("FUZZ_TEMPLATE=welcome")
print("FUZZ_TEMPLATE_DELETE=fuzz-delete")
print("FUZZ_WEBHOOK=" + webhook["id"])
print("FUZZ_DELIVERY=" + failed[0]["id"])
EOF
)" || fail "could not create the emails and the webhook the fuzzing needs"
while IFS='=' read -r name value; do
  export "$name=$value"
done <<<"$fixtures"

# --- schemathesis ------------------------------------------------------------------
examples=()
[ -n "${FUZZ_MAX_EXAMPLES:-}" ] && examples=(--max-examples "$FUZZ_MAX_EXAMPLES")
status=0
# From the report directory: schemathesis keeps its replay data in the working directory.
(cd "$REPORT_DIR" &&
  PYTHONPATH="$root/scripts" SCHEMATHESIS_HOOKS=fuzz_hooks \
  "$VENV/bin/st" --config-file "$root/scripts/schemathesis.toml" run \
    "http://$addr/api-docs/openapi.json" --url "http://$addr" \
    --header "Authorization: Bearer $API_KEY" \
    --seed "$SEED" "${examples[@]}" \
    --report junit,har --report-dir "$REPORT_DIR" \
    --report-junit-path "$REPORT_DIR/junit.xml" --report-har-path "$REPORT_DIR/requests.har" \
    "$@") 2>&1 | tee "$REPORT_DIR/schemathesis.txt" ||
  status=$?

kill -0 "$pid" 2>/dev/null || { status=1; say "mailroom died during the run (log: $REPORT_DIR/mailroom.log)"; }
if [ "$status" -ne 0 ]; then
  fail "schemathesis found problems (exit $status) in $((SECONDS - started)) s; report: $REPORT_DIR"
fi
say "no findings in $((SECONDS - started)) s; report: $REPORT_DIR"
