#!/usr/bin/env bash
# Stops what scripts/deps.sh started (by the PID files it wrote); leaves alone services
# it found running.
set -euo pipefail
RUN_DIR="${MAILROOM_RUN_DIR:-$HOME/.cache/mailroom/run}"
for name in maildev nats redis; do
  pidfile="$RUN_DIR/$name.pid"
  if [ -f "$pidfile" ]; then
    pid="$(cat "$pidfile")"
    if kill "$pid" 2>/dev/null; then echo "deps-stop: stopped $name (pid $pid)"; fi
    rm -f "$pidfile"
  fi
done
