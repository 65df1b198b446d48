"""Output is never a reason to stop a transaction: a pipe closed after the first line (`... 2>&1 | head
-1`), stdout on /dev/full, both streams closed. The swap or rollback finishes as it would have, the run
is recorded (history, evidence, metrics), and a read-only command into a closed pipe exits quietly
(0), never 4, with no traceback and no "Exception ignored" from Python's flush at exit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from tests.support.host import REPO, nightly

pytestmark = pytest.mark.slow


def argv(host, *args: str) -> list[str]:
    return [sys.executable, "-m", "t3track", "--config", str(host.config_path), *args]


def env() -> dict[str, str]:
    full = dict(os.environ)
    full["PYTHONPATH"] = str(REPO / "src") + os.pathsep + full.get("PYTHONPATH", "")
    full.pop("JOURNAL_STREAM", None)
    return full


def through_head_1(host, *args: str) -> tuple[int, str]:
    """`t3track ARGS 2>&1 | head -1`: the reader takes the first line and goes away."""
    proc = subprocess.Popen(argv(host, *args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env())
    assert proc.stdout is not None
    first = proc.stdout.readline().decode()
    proc.stdout.close()
    return proc.wait(timeout=240), first


def into_a_closed_pipe(host, *args: str) -> subprocess.CompletedProcess:
    """stdout is a pipe whose reader is already gone (`t3track status | true`, deterministic); stderr kept."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run(argv(host, *args), stdout=write, stderr=subprocess.PIPE, env=env(), timeout=240)
    finally:
        os.close(write)


def last(host, event: str) -> dict:
    return next(e for e in reversed(host.history()) if e["event"] == event)


def metrics(host) -> str:
    return (host.state_dir / "metrics" / "t3track.prom").read_text()


def test_a_revert_whose_reader_goes_away_after_the_first_line_finishes_and_is_recorded(host):
    v = nightly(1)
    host.publish(v)
    assert host.t3track("run").returncode == 0
    rows = {u.name: host.rows(u) for u in host.users}
    code, first = through_head_1(host, "revert")
    assert code == 0, first
    host.assert_settled("0.0.42", rows)
    revert = last(host, "revert")
    assert revert["outcome"] == "swapped" and revert["to"] == "0.0.42"
    assert (host.state_dir / "evidence" / revert["run_id"] / "result.json").is_file()
    assert any(d["version"] == v and d["gate"] == "revert" for d in host.state()["denied"])
    assert not host.state().get("frozen")                     # the tracker never froze itself
    assert 't3track_last_run_outcome{outcome="swapped"} 1.0' in metrics(host)


def test_a_night_whose_reader_goes_away_after_the_first_line_swaps_and_is_recorded(host):
    v = nightly(1)
    host.publish(v, migrations=53)
    rows = {u.name: host.rows(u) for u in host.users}
    code, _ = through_head_1(host, "run")
    assert code == 0
    host.assert_settled(v, rows)
    run = last(host, "run")
    assert run["outcome"] == "swapped" and run["exit_code"] == 0
    log = (host.state_dir / "evidence" / run["run_id"] / "run.log").read_text()
    assert "live check bob" in log                      # the progress went on to the run's log all the same
    assert 't3track_last_run_outcome{outcome="swapped"} 1.0' in metrics(host)


def test_a_night_that_fails_live_with_its_reader_gone_rolls_back_as_it_would_have(host):
    v = nightly(1)
    host.publish(v, migrations=53, fault="no-cookie-live")
    rows = {u.name: host.rows(u) for u in host.users}
    code, _ = through_head_1(host, "run")
    assert code == 1                                      # rolled back, as without the pipe
    host.assert_settled("0.0.42", rows)
    for user in host.users:
        assert host.max_migration(user) == 52
    assert last(host, "run")["outcome"] == "rolled_back"
    assert any(d["version"] == v for d in host.state()["denied"])


def test_a_night_with_stdout_on_dev_full_swaps_and_exits_0(host):
    v = nightly(1)
    host.publish(v)
    rows = {u.name: host.rows(u) for u in host.users}
    with open("/dev/full", "w") as full:
        done = subprocess.run(argv(host, "run"), stdout=full, stderr=subprocess.PIPE, text=True, env=env(),
                              timeout=240)
    assert done.returncode == 0, done.stderr
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr
    host.assert_settled(v, rows)
    assert last(host, "run")["outcome"] == "swapped"


def test_a_night_with_both_streams_closed_swaps_and_exits_0(host):
    v = nightly(1)
    host.publish(v)
    rows = {u.name: host.rows(u) for u in host.users}
    done = subprocess.run(argv(host, "run"), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, env=env(), timeout=240,
                          preexec_fn=lambda: (os.close(1), os.close(2)))
    assert done.returncode == 0
    host.assert_settled(v, rows)
    assert last(host, "run")["outcome"] == "swapped"
    json.loads((host.state_dir / "state.json").read_text())  # no output landed in a state file


def test_a_revert_with_stderr_on_dev_full_finishes_and_never_ends_critical(host):
    v = nightly(1)
    host.publish(v, migrations=53)
    assert host.t3track("run").returncode == 0
    rows = {u.name: host.rows(u) for u in host.users}
    with open("/dev/full", "w") as full:
        done = subprocess.run(argv(host, "revert", "--restore-state"), stdout=subprocess.PIPE, stderr=full,
                              text=True, env=env(), timeout=240)
    assert done.returncode == 0, done.stdout
    host.assert_settled("0.0.42", rows)
    for user in host.users:
        assert host.max_migration(user) == 52                 # the pre-swap databases are back
    assert last(host, "revert")["outcome"] == "swapped"
    assert not host.state().get("frozen")


def test_a_backup_with_stderr_on_dev_full_still_takes_every_backup(host):
    before = {p for p in host.backup_dir.rglob("*") if p.is_dir()}
    with open("/dev/full", "w") as full:
        done = subprocess.run(argv(host, "backup"), stdout=subprocess.PIPE, stderr=full, text=True, env=env(),
                              timeout=240)
    assert done.returncode == 0
    after = {p for p in host.backup_dir.rglob("*") if p.is_dir()}
    assert len(after - before) >= len(host.users)


@pytest.mark.parametrize("command", [["status"], ["history"], ["show", "last"], ["config", "check"],
                                     ["status", "--json"], ["--version"]])
def test_a_read_only_command_into_a_closed_pipe_exits_quietly(host, command):
    host.publish(nightly(1))
    assert host.t3track("dry-run").returncode == 0  # something for history and show to print
    done = into_a_closed_pipe(host, *command)
    assert done.returncode == 0, done.stderr
    assert done.stderr == b"", done.stderr               # no traceback, no "Exception ignored"


@pytest.mark.parametrize("command", [["status"], ["history"]])
def test_a_read_only_command_to_dev_full_exits_quietly(host, command):
    with open("/dev/full", "w") as full:
        done = subprocess.run(argv(host, *command), stdout=full, stderr=subprocess.PIPE, env=env(), timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == b""
