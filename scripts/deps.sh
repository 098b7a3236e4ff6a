#!/usr/bin/env bash
# Makes sure mailroom's dependencies are up on this machine: PostgreSQL, Redis, NATS with
# JetStream, and an SMTP sink with a web UI and API (maildev). Starts what is installed
# locally, installs maildev from npm when needed, and says what to do about the rest.
# Idempotent: safe to run again and again.
set -euo pipefail

cd "$(dirname "$0")/.."

TOOLS_DIR="${MAILROOM_TOOLS_DIR:-$HOME/.cache/mailroom/tools}"
RUN_DIR="${MAILROOM_RUN_DIR:-$HOME/.cache/mailroom/run}"
MAILDEV_VERSION="${MAILDEV_VERSION:-3.0.0}"
SMTP_PORT="${MAILROOM_SMTP_PORT:-1025}"
MAILDEV_WEB_PORT="${MAILROOM_MAILDEV_WEB_PORT:-8025}"
mkdir -p "$TOOLS_DIR" "$RUN_DIR"

say() { printf 'deps: %s\n' "$*"; }
fail() { printf 'deps: %s\n' "$*" >&2; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port name seconds
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    port_open "$1" && return 0
    sleep 0.1
  done
  fail "$2 did not start listening on 127.0.0.1:$1 within $3 s"
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi
}

apt_install() { # packages...
  command -v apt-get >/dev/null || return 1
  say "installing $* with apt-get"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null ||
    { as_root apt-get update -q >/dev/null && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null; }
}

# --- PostgreSQL ---------------------------------------------------------------------
if port_open 5432; then
  say "PostgreSQL is up on 127.0.0.1:5432"
elif command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ] && [ -n "$(ls /etc/postgresql)" ]; then
  version="$(ls /etc/postgresql | sort -V | tail -n 1)"
  say "starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
  wait_port 5432 PostgreSQL 30
else
  fail "PostgreSQL is not running on 127.0.0.1:5432 and no local cluster was found.
      Start one, or run the dependencies in Docker: make local"
fi

# --- Redis --------------------------------------------------------------------------
if port_open 6379; then
  say "Redis is up on 127.0.0.1:6379"
elif command -v redis-server >/dev/null; then
  say "starting Redis"
  mkdir -p "$RUN_DIR/redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir "$RUN_DIR/redis" --logfile "$RUN_DIR/redis.log" --pidfile "$RUN_DIR/redis.pid"
  wait_port 6379 Redis 10
else
  fail "Redis is not running on 127.0.0.1:6379 and redis-server is not installed.
      Install it (apt-get install redis-server), or run: make local"
fi

# --- NATS with JetStream ------------------------------------------------------------
if port_open 4222; then
  say "NATS is up on 127.0.0.1:4222"
else
  nats_server="$(command -v nats-server || true)"
  [ -z "$nats_server" ] && [ -x /usr/sbin/nats-server ] && nats_server=/usr/sbin/nats-server
  [ -n "$nats_server" ] || fail "NATS is not running on 127.0.0.1:4222 and nats-server is not installed.
      Install it (apt-get install nats-server), or run: make local"
  say "starting NATS with JetStream"
  mkdir -p "$RUN_DIR/nats"
  if command -v start-stop-daemon >/dev/null; then
    start-stop-daemon --start --oknodo --background --make-pidfile --pidfile "$RUN_DIR/nats.pid" \
      --exec "$nats_server" -- -a 127.0.0.1 -p 4222 -js -sd "$RUN_DIR/nats" -l "$RUN_DIR/nats.log"
  else
    nohup "$nats_server" -a 127.0.0.1 -p 4222 -js -sd "$RUN_DIR/nats" -l "$RUN_DIR/nats.log" >/dev/null 2>&1 &
    echo $! >"$RUN_DIR/nats.pid"
  fi
  wait_port 4222 NATS 10
fi

# --- SMTP sink: maildev -------------------------------------------------------------
if port_open "$SMTP_PORT"; then
  say "an SMTP server is up on 127.0.0.1:$SMTP_PORT"
  port_open "$MAILDEV_WEB_PORT" || say "warning: nothing serves a mail UI/API on 127.0.0.1:$MAILDEV_WEB_PORT"
else
  maildev="$TOOLS_DIR/node_modules/.bin/maildev"
  if [ ! -x "$maildev" ]; then
    command -v npm >/dev/null || apt_install nodejs npm || fail "npm is needed to install maildev"
    say "installing maildev $MAILDEV_VERSION into $TOOLS_DIR"
    npm install --silent --no-audit --no-fund --prefix "$TOOLS_DIR" "maildev@$MAILDEV_VERSION" >/dev/null
  fi
  say "starting maildev (SMTP 127.0.0.1:$SMTP_PORT, UI and API http://127.0.0.1:$MAILDEV_WEB_PORT)"
  nohup "$maildev" --ip 127.0.0.1 --web-ip 127.0.0.1 -s "$SMTP_PORT" -w "$MAILDEV_WEB_PORT" \
    >"$RUN_DIR/maildev.log" 2>&1 &
  echo $! >"$RUN_DIR/maildev.pid"
  wait_port "$SMTP_PORT" maildev 30
  wait_port "$MAILDEV_WEB_PORT" "maildev's web UI" 30
fi

say "all dependencies are up"
