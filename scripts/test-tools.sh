#!/usr/bin/env bash
# Installs the programs the deployment tests drive, when they are missing: promtool and
# prometheus (Debian package `prometheus`), Alertmanager and amtool
# (`prometheus-alertmanager`), nginx, headless Chromium and docker-compose
# (to validate the compose files without a Docker engine), and dkimpy with PyNaCl
# (python3-dkim, python3-nacl: the independent DKIM verifier of the signing tests,
# scripts/dkim-verify.py). Idempotent: with everything
# present it only checks. apt never starts a daemon here; the tests start their own
# nginx and Prometheus on free ports and stop them.
set -euo pipefail

say() { printf 'test-tools: %s\n' "$*"; }
fail() { printf 'test-tools: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi
}

# command -v misses /usr/sbin for non-root users, where Debian puts nginx.
have() { command -v "$1" >/dev/null || [ -x "/usr/sbin/$1" ]; }

missing=()
want() { # command package
  have "$1" || missing+=("$2")
}
want promtool prometheus
want prometheus prometheus
want prometheus-alertmanager prometheus-alertmanager
want amtool prometheus-alertmanager
want nginx nginx
want chromium chromium
want docker-compose docker-compose
# Debian's Python (not whatever python3 is first on PATH) has Debian's modules.
/usr/bin/python3 -c 'import dkim, nacl' 2>/dev/null || missing+=(python3-dkim python3-nacl)

if [ "${#missing[@]}" -eq 0 ]; then
  say "promtool, prometheus, alertmanager, nginx, chromium, docker-compose and dkimpy are installed"
  exit 0
fi

# Deduplicated: promtool and prometheus come from the same package.
packages="$(printf '%s\n' "${missing[@]}" | sort -u | xargs)"
command -v apt-get >/dev/null || fail "missing packages: $packages; install them, the tests need them"
say "installing $packages with apt-get"
# The tests start their own nginx, Prometheus and Alertmanager on free ports; the
# packages' services must not start (they would take ports 80, 9090 and 9093, or fail without an init system).
# A policy-rc.d that exits 101 is Debian's documented way to say so to maintainer
# scripts. Only set for this install, and only when nobody has set a policy already.
policy=/usr/sbin/policy-rc.d
own_policy=no
if [ ! -e "$policy" ]; then
  as_root sh -c "printf '#!/bin/sh\nexit 101\n' >$policy && chmod +x $policy" && own_policy=yes
fi
cleanup() { [ "$own_policy" = yes ] && as_root rm -f "$policy"; return 0; }
trap cleanup EXIT
# shellcheck disable=SC2086 # the package list is meant to split
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $packages >/dev/null ||
  { as_root apt-get update -q >/dev/null &&
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $packages >/dev/null; } ||
  fail "could not install $packages"

for tool in promtool prometheus nginx chromium docker-compose; do
  have "$tool" || fail "$tool is still missing after installing $packages"
done
/usr/bin/python3 -c 'import dkim, nacl' || fail "dkimpy is still missing after installing $packages"
say "installed $packages"
