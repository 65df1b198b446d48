"""The nightly job end to end on an emulated host: a real registry on loopback, real npm installs of
emulator builds, real servers under a supervisor, real SQLite, a real symlink."""

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, timedelta
from pathlib import Path

import pytest
from tests.support.host import nightly, wait_for_version

pytestmark = pytest.mark.slow


def last_event(host, event):
    return next(e for e in reversed(host.history()) if e["event"] == event)


def test_a_good_nightly_is_swapped_in_and_serves_every_user(host):
    v = nightly(1)
    host.publish(v, migrations=53)
    result = host.t3track("run", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["outcome"] == "swapped" and doc["from"] == "0.0.42" and doc["to"] == v
    assert {g["name"] for g in doc["gates"]} >= {"backup-present", "sandbox-serve", "pairing-probe", "live-verify"}
    assert host.current_target() == f"versions/{v}"
    for user in host.users:
        assert host.serving(user) == v
        assert host.max_migration(user) == 53
    state = host.state()
    assert state["current"] == v and state["previous"] == "0.0.42"
    run = last_event(host, "run")
    assert run["outcome"] == "swapped" and run["to"] == v
    assert not (host.state_dir / "journal.json").exists()


def test_a_nightly_failing_only_live_is_rolled_back_with_every_row_kept(host):
    v = nightly(1)
    host.publish(v, migrations=53)
    # passes every gate in the sandbox, then breaks once live: dry-run installs it, then the build's
    # behaviour flips so the live servers answer 200 without a cookie
    assert host.t3track("dry-run").returncode == 0
    for user in host.users:
        host.write_rows(user, 3, "before-swap")
    rows_before = {u.name: host.rows(u) for u in host.users}
    host.set_fault(v, "no-cookie-live")
    result = host.t3track("run", "--json")
    doc = json.loads(result.stdout)
    assert result.returncode == 1, result.stderr
    assert doc["outcome"] == "rolled_back"
    assert host.current_target() == "versions/0.0.42"
    for user in host.users:
        assert host.serving(user) == "0.0.42"
        assert host.rows(user) == rows_before[user.name]     # rows written before the swap all present
        assert host.max_migration(user) == 52                 # the forward migration was undone
    state = host.state()
    assert state["current"] == "0.0.42"
    denial = next(d for d in state["denied"] if d["version"] == v)
    assert denial["gate"] == "live-verify" and denial["evidence"]
    assert not (host.state_dir / "journal.json").exists()


def test_a_failed_rollback_freezes_keeps_the_journal_and_exits_4(host):
    v = nightly(1)
    host.publish(v)
    assert host.t3track("dry-run").returncode == 0
    host.set_fault(v, "no-cookie-live")
    host.set_fault("0.0.42", "crash-on-start-live")  # the old version cannot come back either
    result = host.t3track("run", "--json")
    assert result.returncode == 4, result.stderr
    assert json.loads(result.stdout)["outcome"] == "critical"
    state = host.state()
    assert state["frozen"]["by"] == "t3track" and "rollback failed" in state["frozen"]["reason"]
    assert (host.state_dir / "journal.json").exists()

    # the next night retries the rollback first and, while it still fails, says so with exit 4
    again = host.t3track("run", "--json")
    assert again.returncode == 4 and json.loads(again.stdout)["outcome"] == "critical"
    assert (host.state_dir / "journal.json").exists()

    # once the operator has fixed the old version, the next night finishes the rollback
    host.set_fault("0.0.42", None)
    fixed = host.t3track("run", "--json")
    assert fixed.returncode == 1, fixed.stderr  # the night's news is the rollback it finished, not a frozen no-op
    assert json.loads(fixed.stdout)["recovered"].startswith("rolled_back")
    assert json.loads(fixed.stdout)["outcome"] == "rolled_back"
    assert not (host.state_dir / "journal.json").exists()
    for user in host.users:
        assert host.serving(user) == "0.0.42"
    assert host.state()["frozen"] is not None  # still frozen until an operator has looked
    assert any(d["version"] == v for d in host.state()["denied"])


def test_a_swap_step_failing_after_the_stop_rolls_back_and_every_server_serves_again(host):
    v = nightly(1)
    host.publish(v, migrations=53)
    host.state_dir.joinpath("snapshots").write_text("not a directory")  # the snapshot cannot be written
    result = host.t3track("run", "--json")
    assert result.returncode == 1, result.stderr
    doc = json.loads(result.stdout)
    assert doc["outcome"] == "rolled_back" and "swap step failed" in doc["reason"]
    assert host.current_target() == "versions/0.0.42"
    for user in host.users:
        assert host.serving(user) == "0.0.42"
    state = host.state()
    # before any server started on it, the candidate never ran: the host's fault, not counted against it
    assert not state.get("failures", {}).get(v) and not any(d["version"] == v for d in state["denied"])
    assert last_event(host, "run")["outcome"] == "rolled_back"


def test_each_database_is_snapshotted_after_its_own_servers_stop_and_before_the_flip(host):
    v = nightly(1)
    host.publish(v, migrations=53)
    result = host.t3track("run", "--json")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    flip = lines.index(f"point current at {v}")
    for user in host.users:
        assert lines.index(f"stop {user.name}'s server") < lines.index(f"snapshot {user.name}'s database") < flip
    snapshots = Path(host.state()["current_snapshot"])
    for user in host.users:
        assert (snapshots / user.name / "manifest.json").is_file()


def test_dry_runs_never_count_toward_denying_a_version(host):
    v = nightly(1)
    host.publish(v, fault="no-cookie")
    for _ in range(3):
        assert host.t3track("dry-run").returncode == 1
    state = host.state()
    assert v not in state.get("failures", {}) and not state["denied"]


def test_a_registry_outage_is_an_error_night_with_exit_3_and_a_history_line(host):
    host.registry.stop()
    result = host.t3track("run", "--json")
    assert result.returncode == 3
    doc = json.loads(result.stdout)
    assert doc["outcome"] == "error" and host.registry.url.rstrip("/") in doc["reason"]
    assert last_event(host, "run")["outcome"] == "error"
    assert host.state()["last_run"]["exit_code"] == 3
    assert host.current_target() == "versions/0.0.42"


def test_revert_goes_back_and_denies_the_version_it_leaves(host):
    v = nightly(1)
    host.publish(v, migrations=53)
    assert host.t3track("run").returncode == 0
    for user in host.users:
        host.write_rows(user, 2, "after-swap")
    rows = {u.name: host.rows(u) for u in host.users}
    result = host.t3track("revert", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["to"] == "0.0.42"
    assert any("migrations up to 53" in n for n in doc["notes"])  # warned: target older than the database
    assert host.current_target() == "versions/0.0.42"
    for user in host.users:
        assert host.serving(user) == "0.0.42"
        assert host.rows(user) == rows[user.name]          # state kept: not asked to restore
        assert host.max_migration(user) == 53
    state = host.state()
    assert state["current"] == "0.0.42" and state["previous"] == v
    assert any(d["version"] == v and d["gate"] == "revert" for d in state["denied"])
    assert last_event(host, "revert")["restore_state"] is False


def test_revert_with_restore_state_puts_back_the_pre_swap_database(host):
    v = nightly(1)
    host.publish(v, migrations=53)
    rows_before = {u.name: host.rows(u) for u in host.users}
    assert host.t3track("run").returncode == 0
    for user in host.users:
        host.write_rows(user, 2, "after-swap")
    result = host.t3track("revert", "--restore-state")
    assert result.returncode == 0, result.stderr
    for user in host.users:
        assert host.serving(user) == "0.0.42"
        assert host.rows(user) == rows_before[user.name]
        assert host.max_migration(user) == 52
    assert last_event(host, "revert")["restored"] == [u.name for u in host.users]


def test_two_concurrent_runs_give_one_exit_75(host):
    v = nightly(1)
    host.publish(v)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    cmd = [sys.executable, "-m", "t3track", "--config", str(host.config_path), "run"]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # wait until the first holds the lock (its pid is written into the lock file)
    lock = host.state_dir / "lock"
    import time
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (lock.exists() and lock.read_text().strip() == str(first.pid)):
        time.sleep(0.02)
    second = host.t3track("run")
    first.communicate(timeout=240)
    assert second.returncode == 75
    assert str(first.pid) in second.stderr
    assert first.returncode == 0


@pytest.mark.parametrize("phase", ["planned", "stopping", "snapshotted", "flipped", "started", "verified",
                                   "rolling_back"])
def test_a_run_killed_at_any_journal_phase_converges_on_the_next_run(host, phase):
    v = nightly(1)
    host.publish(v, migrations=53)
    for user in host.users:
        host.write_rows(user, 2, "before")
    rows = {u.name: host.rows(u) for u in host.users}
    if phase == "rolling_back":
        assert host.t3track("dry-run").returncode == 0
        host.set_fault(v, "no-cookie-live")
    killed = host.t3track("run", env={"T3TRACK_FAULT_KILL_AT": phase})
    assert killed.returncode == -signal.SIGKILL
    assert (host.state_dir / "journal.json").exists()
    # users keep working between the kill and the next night (where a server is up)
    for user in host.users:
        host.write_rows(user, 1, "after-kill")
    rows_after_kill = {u.name: host.rows(u) for u in host.users}

    after = host.t3track("run", "--json")
    doc = json.loads(after.stdout)
    assert doc["recovered"], after.stderr
    state = host.state()
    target = host.current_target()
    assert target in ("versions/0.0.42", f"versions/{v}")
    serving = target.split("/", 1)[1]
    assert state["current"] == serving
    for user in host.users:
        assert wait_for_version(user.url, serving, timeout=20) == serving
        assert set(rows[user.name]) <= set(host.rows(user))   # no row from before the night lost
        if phase != "rolling_back":  # a rollback already under way must restore the migrated database
            assert set(rows_after_kill[user.name]) <= set(host.rows(user))  # nor any written since the kill
    if phase in ("flipped", "started", "verified"):
        assert serving == v  # the candidate was checked live and kept, not undone
    if phase == "rolling_back":
        assert serving == "0.0.42" and any(d["version"] == v for d in state["denied"])
    assert not (host.state_dir / "journal.json").exists()
    assert any(e["event"] == "recover" for e in host.history())


def test_sigterm_during_the_gates_removes_the_sandbox_and_ends_its_server(host):
    import time
    from datetime import datetime

    from tests.emulator import package as emu

    v = nightly(1)
    host.registry.publish("t3", v, emu.tarball_bytes(v, start_delay_s=30), tag="nightly",
                          published_at=datetime.now(UTC) - timedelta(days=1))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    proc = subprocess.Popen([sys.executable, "-m", "t3track", "--config", str(host.config_path), "dry-run"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sandboxes = host.state_dir / "sandboxes"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(sandboxes.glob("t3track-sandbox-*/**/state.sqlite")):
        time.sleep(0.05)
    leftover = list(sandboxes.glob("t3track-sandbox-*"))
    assert leftover, "the sandbox never appeared"
    time.sleep(0.5)  # the candidate is starting (it waits 30 s before it listens)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert not list(sandboxes.glob("t3track-sandbox-*"))
    for pid_dir in Path("/proc").iterdir():
        if pid_dir.name.isdigit():
            try:
                cmdline = (pid_dir / "cmdline").read_bytes()
            except OSError:
                continue
            assert str(leftover[0]).encode() not in cmdline


def test_a_killed_revert_failing_live_on_recovery_does_not_deny_its_target(host):
    v = nightly(1)
    host.publish(v)
    assert host.t3track("run").returncode == 0
    host.set_fault("0.0.42", "no-cookie-live")   # the revert target now fails its live check
    killed = host.t3track("revert", env={"T3TRACK_FAULT_KILL_AT": "flipped"})
    assert killed.returncode == -signal.SIGKILL
    after = host.t3track("run", "--json")
    assert json.loads(after.stdout)["recovered"].startswith("rolled_back"), after.stderr
    assert host.current_target() == f"versions/{v}"
    state = host.state()
    assert state["current"] == v and state["previous"] == "0.0.42"
    assert not any(d["version"] == "0.0.42" for d in state["denied"]), state["denied"]
    host.set_fault("0.0.42", None)


def test_a_swap_killed_at_started_whose_servers_died_is_started_again_and_kept(host):
    v = nightly(1)
    host.publish(v, migrations=53)
    killed = host.t3track("run", env={"T3TRACK_FAULT_KILL_AT": "started"})
    assert killed.returncode == -signal.SIGKILL
    host.stop_servers()            # the host rebooted (or the servers died) before the next night
    after = host.t3track("run", "--json")
    assert json.loads(after.stdout)["recovered"].startswith("finished"), after.stderr
    state = host.state()
    assert not any(d["version"] == v for d in state["denied"])
    assert host.current_target() == f"versions/{v}" and state["current"] == v
    for user in host.users:
        assert wait_for_version(user.url, v, timeout=20) == v
