#!/usr/bin/env bash
# Checks the deployment files that are not Rust (run by scripts/test.sh, so by
# `make test`): Prometheus configuration and alert rules with promtool (syntax and the
# rules' unit tests), and both compose files with docker-compose, which validates them
# without a Docker engine. The nginx configuration, the Grafana dashboard and a real
# Prometheus are tested by the integration tests (tests/it/nginx.rs, monitoring.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'check-deploy: %s\n' "$*"; }
fail() { printf 'check-deploy: %s\n' "$*" >&2; exit 1; }

package_of() {
  case "$1" in promtool) echo prometheus ;; amtool) echo prometheus-alertmanager ;; *) echo "$1" ;; esac
}
for tool in promtool amtool docker-compose; do
  command -v "$tool" >/dev/null || fail "$tool is missing (Debian package $(package_of "$tool")); scripts/test-tools.sh installs it"
done

promtool check config --lint=all --lint-fatal monitoring/prometheus.yml >/dev/null ||
  { promtool check config --lint=all --lint-fatal monitoring/prometheus.yml; fail "monitoring/prometheus.yml is invalid"; }
promtool check rules --lint=all --lint-fatal monitoring/alerts.yml >/dev/null ||
  { promtool check rules --lint=all --lint-fatal monitoring/alerts.yml; fail "monitoring/alerts.yml is invalid"; }
(cd monitoring && promtool test rules alerts.test.yml) >/dev/null ||
  { (cd monitoring && promtool test rules alerts.test.yml) || true; fail "the alert rules' unit tests fail"; }
amtool check-config monitoring/alertmanager.yml >/dev/null ||
  { amtool check-config monitoring/alertmanager.yml; fail "monitoring/alertmanager.yml is invalid"; }
say "Prometheus and Alertmanager configurations, alert rules and their tests pass"

for file in docker-compose.local.yml docker-compose.dev.yml; do
  docker-compose -f "$file" config -q || fail "$file is invalid"
done

# The dev file is the local one plus the two instances. The services both have must be
# the same, except where the files say why they differ: Prometheus' targets and how
# nginx finds the instances.
python=/usr/bin/python3 # Debian's docker-compose depends on it and on python3-yaml
"$python" - <<'EOF' || fail "docker-compose.local.yml and docker-compose.dev.yml have drifted apart"
import subprocess, sys, yaml

def services(path):
    out = subprocess.run(["docker-compose", "-f", path, "config"], check=True,
                         capture_output=True, text=True).stdout
    return yaml.safe_load(out)["services"]

local, dev = services("docker-compose.local.yml"), services("docker-compose.dev.yml")
problems = []
extra = set(dev) - set(local)
if extra != {"mailroom-1", "mailroom-2"}:
    problems.append(f"dev should add exactly mailroom-1 and mailroom-2 to local, adds {sorted(extra)}")
if set(local) - set(dev):
    problems.append(f"dev lacks {sorted(set(local) - set(dev))}")
allowed = {"prometheus": {"volumes", "extra_hosts"}, "nginx": {"extra_hosts", "depends_on"}}
for name in sorted(set(local) & set(dev)):
    keys = set(local[name]) | set(dev[name])
    for key in sorted(keys - allowed.get(name, set())):
        if local[name].get(key) != dev[name].get(key):
            problems.append(f"{name}.{key} differs")
for problem in problems:
    print("  " + problem, file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
say "docker-compose.local.yml and docker-compose.dev.yml are valid and in step"
