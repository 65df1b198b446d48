"""t3track.cli.fast: a plain `t3track status` runs without typer, with typer's output and exit code.

Each command line runs twice as a real process: through the `t3track` entry point (`main`, which
takes the fast path for a plain status) and straight through the typer app. stdout, stderr and the
exit code must be the same; the fast one must not have imported typer."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tests.support.host import REPO

from t3track.cli.fast import plain_status

ENTRY = """
import sys
sys.argv = ["t3track", *sys.argv[1:]]
from t3track.cli import main
try:
    main()
finally:
    with open({marker!r}, "w") as f:
        f.write("typer" if "typer" in sys.modules else "no typer")
"""
TYPER = """
import sys
sys.argv = ["t3track", *sys.argv[1:]]
from t3track.cli import app
app()
"""


@pytest.mark.parametrize(("argv", "parsed"), [
    (["status"], (None, False)),
    (["status", "--json"], (None, True)),
    (["--json", "status"], (None, True)),
    (["--config", "/c.yaml", "status"], (Path("/c.yaml"), False)),
    (["-c", "/c.yaml", "--json", "status", "--json"], (Path("/c.yaml"), True)),
    (["--config=/c.yaml", "status"], (Path("/c.yaml"), False)),
    (["-c", "/a", "-c", "/b", "status"], (Path("/b"), False)),  # the last one wins, as in click
    (["status", "--help"], None), (["--help"], None), (["-h", "status"], None), (["--version"], None),
    (["status", "extra"], None), (["status", "--config", "/c"], None), (["history"], None), ([], None),
    (["--config"], None), (["--config", "", "status"], None), (["--config=", "status"], None),
    (["--", "status"], None), (["status", "status"], None), (["--jsonx", "status"], None),
])
def test_only_a_plain_status_is_taken(argv, parsed):
    assert plain_status(argv) == parsed


def _run(script: str, argv: list[str], tmp_path: Path) -> tuple[subprocess.CompletedProcess, str]:
    marker = tmp_path / "modules"
    marker.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + str(REPO), COLUMNS="120")
    env.pop("T3TRACK_CONFIG", None)
    done = subprocess.run([sys.executable, "-c", script.format(marker=str(marker)), *argv], capture_output=True,
                          text=True, env=env, timeout=120)
    return done, marker.read_text() if marker.exists() else ""


def _steady(text: str) -> str:
    """The two runs are a moment apart: a backup's age is the only thing that may move."""
    text = re.sub(r'"backup_age_s": [0-9.]+', '"backup_age_s": N', text)
    return re.sub(r"\b\d+(\.\d+)?(s|m) old\b", "N old", text)


def _same(argv: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    fast, modules = _run(ENTRY, argv, tmp_path)
    typer, _ = _run(TYPER, argv, tmp_path)
    assert (fast.returncode, _steady(fast.stdout), fast.stderr) == (typer.returncode, _steady(typer.stdout), typer.stderr)
    assert modules == "no typer"
    return fast


def test_a_managed_host_reads_the_same_both_ways(host, tmp_path):
    config = str(host.config_path)
    assert host.t3track("pin", "0.0.42", "--reason", "a test pin").returncode == 0
    for argv in (["--config", config, "status"], ["-c", config, "--json", "status"],
                 [f"--config={config}", "status", "--json"]):
        done = _same(argv, tmp_path)
        assert done.returncode == 0, done.stderr
    doc = json.loads(_same(["--config", config, "status", "--json"], tmp_path).stdout)
    assert doc["current"] == "0.0.42" and doc["pinned"]["reason"] == "a test pin"
    assert [u["name"] for u in doc["users"]] == ["alice", "bob"]


def test_errors_say_the_same_with_the_same_exit_code(tmp_path):
    missing = str(tmp_path / "missing.yaml")
    done = _same(["--config", missing, "status"], tmp_path)
    assert done.returncode == 2 and "does not exist" in done.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("users: [\n")
    done = _same(["--config", str(broken), "--json", "status"], tmp_path)
    assert done.returncode == 2 and json.loads(done.stdout)["exit_code"] == 2
