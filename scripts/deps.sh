#!/usr/bin/env bash
# Makes sure mailroom's dependencies are up on this machine: PostgreSQL (and a login
# that works), Redis, NATS with JetStream, and an SMTP sink with a web UI and API
# (maildev). Checks everything first; when a server is not installed, says in one
# message what is missing and the one command that installs it all, and stops. Then
# starts what is installed but stopped, sets the PostgreSQL password the default
# database URL uses when stock Debian's password authentication refuses it, and
# installs maildev from npm. Idempotent: safe to run again and again.
set -euo pipefail

cd "$(dirname "$0")/.."

TOOLS_DIR="${MAILROOM_TOOLS_DIR:-$HOME/.cache/mailroom/tools}"
RUN_DIR="${MAILROOM_RUN_DIR:-$HOME/.cache/mailroom/run}"
MAILDEV_VERSION="${MAILDEV_VERSION:-3.0.0}"
SMTP_PORT="${MAILROOM_SMTP_PORT:-1025}"
MAILDEV_WEB_PORT="${MAILROOM_MAILDEV_WEB_PORT:-8025}"
# What `make run` connects with (config/default.yaml), unless the environment says else.
DATABASE_URL="${MAILROOM__DATABASE__URL:-postgres://postgres:postgres@127.0.0.1:5432/mails_db}"
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

pg_cluster() { [ -d /etc/postgresql ] && ls /etc/postgresql | sort -V | tail -n 1; }
nats_binary() { command -v nats-server || { [ -x /usr/sbin/nats-server ] && echo /usr/sbin/nats-server; } || true; }
maildev="$TOOLS_DIR/node_modules/.bin/maildev"

# --- 1. What is there: every piece checked before anything is started ------------------
missing=()   # what is not installed, as the user would name it
packages=()  # the Debian packages that install it
if ! port_open 5432 && ! { command -v pg_ctlcluster >/dev/null && [ -n "$(pg_cluster)" ]; }; then
  missing+=("PostgreSQL"); packages+=(postgresql)
fi
if ! port_open 6379 && ! command -v redis-server >/dev/null; then
  missing+=("Redis"); packages+=(redis-server)
fi
if ! port_open 4222 && [ -z "$(nats_binary)" ]; then
  missing+=("NATS server"); packages+=(nats-server)
fi
if ! port_open "$SMTP_PORT" && [ ! -x "$maildev" ] && ! command -v npm >/dev/null; then
  missing+=("Node.js and npm (for maildev, the SMTP sink)"); packages+=(nodejs npm)
fi

if [ "${#missing[@]}" -gt 0 ]; then
  # Node.js alone is installed here (the tests need maildev on a fresh machine); a
  # database or broker server is the user's choice to install.
  only_node=yes
  for package in "${packages[@]}"; do
    case "$package" in nodejs | npm) ;; *) only_node=no ;; esac
  done
  if [ "$only_node" = yes ] && apt_install nodejs npm; then
    say "installed Node.js and npm"
  else
    list="$(printf '%s, ' "${missing[@]}")"
    fail "missing: ${list%, }. Install everything with:

      sudo apt-get install -y ${packages[*]}

    then run this again (or run the dependencies in Docker instead: make local)."
  fi
fi

# --- 2. Start what is installed but stopped ----------------------------------------------
if port_open 5432; then
  say "PostgreSQL is up on 127.0.0.1:5432"
else
  version="$(pg_cluster)"
  say "starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
  wait_port 5432 PostgreSQL 30
fi

# Stock Debian asks for a password on 127.0.0.1, and its postgres role has none: the
# default URL's postgres:postgres login fails until one is set.
if command -v psql >/dev/null; then
  login_url="${DATABASE_URL%/*}/postgres"
  if ! psql "$login_url" -XAtqc 'SELECT 1' >/dev/null 2>"$RUN_DIR/psql.err"; then
    user="$(printf '%s' "$login_url" | sed -E 's#^[a-z]+://([^:@/]+).*#\1#')"
    password="$(printf '%s' "$login_url" | sed -nE 's#^[a-z]+://[^:@/]+:([^@]*)@.*#\1#p')"
    if grep -q "password authentication failed" "$RUN_DIR/psql.err" && [ -n "$password" ] &&
      [[ "$user$password" =~ ^[A-Za-z0-9_.-]+$ ]]; then
      command="ALTER ROLE \"$user\" WITH LOGIN PASSWORD '$password'"
      say "PostgreSQL refused $user's password; setting it (as the postgres system user)"
      if { [ "$(id -u)" -eq 0 ] && su postgres -c "psql -XAtqc \"$command\"" >/dev/null 2>&1; } ||
        sudo -n -u postgres psql -XAtqc "$command" >/dev/null 2>&1; then
        psql "$login_url" -XAtqc 'SELECT 1' >/dev/null 2>&1 || fail "PostgreSQL still refuses $user after setting the password; see $RUN_DIR/psql.err"
        say "PostgreSQL accepts $user now"
      else
        fail "PostgreSQL refuses the login of the database URL ($user). Set its password with:

      sudo -u postgres psql -c \"$command\"

    or point MAILROOM__DATABASE__URL at a role that works."
      fi
    else
      fail "PostgreSQL refuses the login of the database URL: $(head -n 1 "$RUN_DIR/psql.err")
      Point MAILROOM__DATABASE__URL at a role that works."
    fi
  fi
fi

if port_open 6379; then
  say "Redis is up on 127.0.0.1:6379"
else
  say "starting Redis"
  mkdir -p "$RUN_DIR/redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir "$RUN_DIR/redis" --logfile "$RUN_DIR/redis.log" --pidfile "$RUN_DIR/redis.pid"
  wait_port 6379 Redis 10
fi

if port_open 4222; then
  say "NATS is up on 127.0.0.1:4222"
else
  nats_server="$(nats_binary)"
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

# --- 3. The SMTP sink: maildev ------------------------------------------------------------
if port_open "$SMTP_PORT"; then
  say "an SMTP server is up on 127.0.0.1:$SMTP_PORT"
  port_open "$MAILDEV_WEB_PORT" || say "warning: nothing serves a mail UI/API on 127.0.0.1:$MAILDEV_WEB_PORT"
else
  if [ ! -x "$maildev" ]; then
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
