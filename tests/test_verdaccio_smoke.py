"""The CI smoke against verdaccio, the registry people run as a private npm mirror: real `npm publish`,
real `npm dist-tag add`, and whole nights of the real t3track CLI against it (.ci/verdaccio/smoke.py).

Run here so that the suite's closing line counts it, and `.ci/run` stays the README's test command."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_whole_nights_against_verdaccio_pass():
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("npm_config_registry", None)  # `npm ci` of verdaccio itself: npm's own registry (conftest.py)
    proc = subprocess.run(["bash", str(REPO / ".ci" / "verdaccio-smoke")], capture_output=True, text=True,
                          env=env, timeout=600, cwd=REPO)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    closing = re.findall(r"^(\d+) passed, (\d+) failed$", proc.stdout, re.M)
    assert closing and int(closing[-1][0]) >= 4 and closing[-1][1] == "0", output[-4000:]
