#!/usr/bin/env bash
# Removes what interrupted test runs left behind: databases named
# mailroom_test_<unix time>_<hex> and Redis keys under mailroom-test:<unix time>_<hex>:,
# when that time is more than MAX_AGE seconds ago (default 6 hours, so a test run going
# on beside this one keeps its own). JetStream streams of such runs (t<unix time>_…_MAIL)
# are not removed here: they hold a few test messages each and go with the NATS store.
set -euo pipefail

MAX_AGE="${MAX_AGE:-21600}"
ADMIN_URL="${MAILROOM_TEST_DATABASE_URL:-postgres://postgres:postgres@127.0.0.1:5432/postgres}"
REDIS_URL="${MAILROOM_TEST_REDIS_URL:-redis://127.0.0.1:6379}"
cutoff=$(($(date +%s) - MAX_AGE))

old_enough() { # name-with-a-unix-time-after-the-prefix prefix
  local rest="${1#"$2"}" stamp
  stamp="${rest%%_*}"
  [[ "$stamp" =~ ^[0-9]+$ ]] && [ "$stamp" -lt "$cutoff" ]
}

dropped=0
if command -v psql >/dev/null; then
  while read -r db; do
    [ -n "$db" ] || continue
    if old_enough "$db" mailroom_test_; then
      psql "$ADMIN_URL" -qtAc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null && dropped=$((dropped + 1))
    fi
  done < <(psql "$ADMIN_URL" -qtAc "SELECT datname FROM pg_database WHERE datname LIKE 'mailroom\_test\_%'" 2>/dev/null || true)
fi

deleted=0
if command -v redis-cli >/dev/null; then
  while read -r key; do
    [ -n "$key" ] || continue
    if old_enough "$key" mailroom-test:; then
      redis-cli -u "$REDIS_URL" del "$key" >/dev/null && deleted=$((deleted + 1))
    fi
  done < <(redis-cli -u "$REDIS_URL" --scan --pattern 'mailroom-test:*' 2>/dev/null || true)
fi

if [ "$dropped" -gt 0 ] || [ "$deleted" -gt 0 ]; then
  echo "test-leftovers: dropped $dropped databases and $deleted Redis keys of interrupted runs"
fi
