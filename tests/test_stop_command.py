"""`t3track stop`: the operator's way to ask a running night to stop at its next safe point (the same
SIGTERM as `systemctl stop t3track.service`), sent only to a lock holder that is t3track; and the
exit-75 message of a command that finds the lock held names both ways."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from tests.support.host import REPO, nightly, wait_for_version

pytestmark = pytest.mark.slow


def start(host, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "t3track", "--config", str(host.config_path), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for_log(host, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for log in (host.state_dir / "evidence").glob("*/run.log"):
            if text in log.read_text():
                return
        time.sleep(0.1)
    raise AssertionError(f"no run.log says {text!r}")


def test_stop_asks_a_running_night_to_stop_and_it_leaves_everyone_as_they_were(host):
    v = nightly(1)
    host.publish(v, migrations=53, start_delay_s=3)            # the sandbox gate takes a few seconds
    rows = {u.name: host.rows(u) for u in host.users}
    pids = host.server_pids()
    night = start(host, "run")
    wait_for_log(host, "installing")
    freeze = host.t3track("freeze", "--reason", "x")
    assert freeze.returncode == 75
    assert "t3track stop" in freeze.stderr and "systemctl stop t3track.service" in freeze.stderr
    stop = host.t3track("stop")
    assert stop.returncode == 0, stop.stderr
    assert f"asked pid {night.pid}" in stop.stdout and "it stopped" in stop.stdout
    assert night.wait(timeout=60) == 130
    assert host.current_target() == "versions/0.0.42" and host.server_pids() == pids
    assert not (host.state_dir / "journal.json").exists()
    sandboxes = host.state_dir / "sandboxes"
    assert not sandboxes.exists() or not any(sandboxes.iterdir())  # every sandbox was cleaned up
    for user in host.users:
        assert wait_for_version(user.url, "0.0.42", timeout=10) == "0.0.42"
        assert host.rows(user) == rows[user.name]
    run = next(e for e in reversed(host.history()) if e["event"] == "run")
    assert run["outcome"] == "error" and "SIGTERM" in run["reason"]
    assert not any(d["version"] == v for d in host.state()["denied"])
    assert host.t3track("freeze", "--reason", "now").returncode == 0  # the lock is free


def test_stop_with_no_run_says_there_is_nothing_to_stop(host):
    done = host.t3track("stop")
    assert done.returncode == 0
    assert "nothing to stop" in done.stdout


def test_stop_never_signals_a_lock_holder_that_is_not_t3track(host):
    lock = host.state_dir / "lock"
    other = subprocess.Popen(["flock", str(lock), "sleep", "60"])
    try:
        deadline = time.monotonic() + 10
        while subprocess.run(["flock", "-n", str(lock), "true"]).returncode == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        lock.write_text(f"{other.pid}\n")
        done = host.t3track("stop")
        assert done.returncode == 3
        assert f"pid {other.pid}, which is not t3track" in done.stderr and "nothing was signalled" in done.stderr
        assert other.poll() is None                                 # still running: never signalled
    finally:
        other.kill()
        other.wait()
