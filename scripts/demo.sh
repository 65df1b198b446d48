#!/usr/bin/env bash
# The README's first command: set up a virtualenv and run several nights of t3track on an embedded
# default host (loopback registry, emulated T3 Code servers). Needs Python >= 3.11, Node and npm.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${T3TRACK_DEMO_VENV:-.venv-demo}"
if [ ! -x "$venv/bin/t3track" ]; then
  echo "setting up $venv (first run only)..."
  python3 -m venv "$venv"
  if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e . >"$venv/install.log" 2>&1; then
    cat "$venv/install.log" >&2
    echo "demo: installing t3track into $venv failed (log above)" >&2
    exit 3
  fi
fi
exec "$venv/bin/python" scripts/demo.py "$@"
