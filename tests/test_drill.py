"""`t3track drill` on an emulated host: the real swap and rollback path, without changing version."""

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.support.host import build_host
from typer.testing import CliRunner

from t3track.cli import app
from t3track.commands.drill import copy_name, downtime
from t3track.host.services import UserMark

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    h = build_host(tmp_path_factory.mktemp("drillhost"))
    assert h.t3track("backup").returncode == 0
    yield h
    h.close()


def snapshot_of(host):
    """Everything a drill must leave as it was."""
    return {
        "current": host.current_target(),
        "state": (host.state_dir / "state.json").read_bytes(),
        "rows": {u.name: host.rows(u) for u in host.users},
        "migrations": {u.name: host.max_migration(u) for u in host.users},
        "versions": sorted(p.name for p in (host.root / "versions").iterdir()),
    }


def drill_events(host):
    return [e for e in host.history() if e["event"] == "drill"]


def test_the_drill_swaps_and_rolls_back_for_real_and_leaves_everything_as_it_was(host):
    before = snapshot_of(host)
    pids_before = host.server_pids()
    result = host.t3track("drill", "--yes", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["outcome"] == "rolled_back" and doc["passed"] is True
    assert doc["version"] == "0.0.42" and doc["copy"].startswith("0.0.42+drill.")
    assert "treated as failed" in doc["simulated"] and "only simulated step" in doc["simulated"]
    steps = [s["name"] for s in doc["steps"]]
    for user in host.users:  # each real step ran, for each user, both ways
        assert steps.count(f"stop {user.name}'s server") == 2
        assert steps.count(f"start {user.name}'s server") == 2
        assert f"snapshot {user.name}'s database" in steps
        assert any(s.startswith(f"restore {user.name}'s database from ") for s in steps)
        assert sum(s.startswith(f"live check {user.name} ") for s in steps) == 2
        assert 0 < doc["downtime_s"][user.name] < 60
    assert f"point current at {doc['copy']}" in steps and any(s.startswith("rolling back to 0.0.42") for s in steps)
    assert all(s["duration_s"] >= 0 for s in doc["steps"])
    # the old version's live check ran after the rollback and passed for every user
    checks = [g for g in doc["gates"] if g["name"] in ("live-verify", "rollback-verify")]
    rollback_checks = checks[len(host.users):]
    assert [g["outcome"] for g in rollback_checks] == ["pass"] * len(host.users)

    assert snapshot_of(host) == before
    for user in host.users:
        assert host.serving(user) == "0.0.42"
    assert host.server_pids() != pids_before  # the servers really were stopped and started
    assert not (host.state_dir / "journal.json").exists()
    assert not (host.state_dir / "snapshots" / doc["run_id"]).exists()
    event = drill_events(host)[-1]
    assert event["run_id"] == doc["run_id"] and event["passed"] is True and event["exit_code"] == 0
    assert event["downtime_s"] == max(doc["downtime_s"].values())
    result_json = json.loads((host.state_dir / "evidence" / doc["run_id"] / "result.json").read_text())
    assert result_json["kind"] == "drill" and result_json["steps"] == doc["steps"]
    assert (host.state_dir / "evidence" / doc["run_id"] / "run.log").read_text().count("stop alice's server") == 2
    metrics = {s.name: s.value for f in text_string_to_metric_families(
        (host.state_dir / "metrics" / "t3track.prom").read_text()) for s in f.samples}
    assert metrics["t3track_last_drill_ok"] == 1
    assert metrics["t3track_last_drill_downtime_seconds"] == pytest.approx(event["downtime_s"])


def test_show_prints_a_drill_with_its_steps(host):
    assert host.t3track("drill", "--yes").returncode == 0
    shown = host.t3track("show", "last")
    assert shown.returncode == 0, shown.stderr
    assert "steps" in shown.stdout and "point current back at 0.0.42" in shown.stdout
    assert drill_events(host)[-1]["run_id"] in shown.stdout


def test_the_drill_refuses_while_frozen_and_changes_nothing(host):
    assert host.t3track("freeze", "--reason", "release week").returncode == 0
    try:
        before, pids, drills = snapshot_of(host), host.server_pids(), len(drill_events(host))
        result = host.t3track("drill", "--yes")
        assert result.returncode == 2
        assert "frozen" in result.stderr and "release week" in result.stderr
        assert snapshot_of(host) == before and host.server_pids() == pids
        assert len(drill_events(host)) == drills
    finally:
        assert host.t3track("unfreeze").returncode == 0


def test_the_drill_refuses_mid_swap_and_changes_nothing(host):
    journal = host.state_dir / "journal.json"
    journal.write_text(json.dumps({"run_id": "x", "from_version": "0.0.42", "to_version": "0.0.43",
                                   "phase": "flipped", "started_at": "2026-11-27T03:00:00Z",
                                   "updated_at": "2026-11-27T03:00:01Z"}))
    try:
        before, pids = snapshot_of(host), host.server_pids()
        result = host.t3track("drill", "--yes")
        assert result.returncode == 2 and "unfinished" in result.stderr
        assert snapshot_of(host) == before and host.server_pids() == pids
        assert journal.exists()
    finally:
        journal.unlink()


def test_the_drill_asks_first_and_a_no_changes_nothing(host, monkeypatch):
    before, pids, drills = snapshot_of(host), host.server_pids(), len(drill_events(host))
    result = CliRunner().invoke(app, ["--config", str(host.config_path), "drill"], input="n\n")
    assert result.exit_code == 2
    assert "Go ahead?" in result.output and "not confirmed" in result.output
    assert snapshot_of(host) == before and host.server_pids() == pids
    assert len(drill_events(host)) == drills


def test_a_copy_left_by_a_killed_drill_is_removed_by_the_next_one(host):
    leftover = host.root / "versions" / "0.0.42+drill.19990101T000000Z"
    leftover.mkdir()
    (leftover / "junk").write_text("x")
    assert host.t3track("drill", "--yes").returncode == 0
    assert not leftover.exists()
    assert sorted(p.name for p in (host.root / "versions").iterdir()) == ["0.0.42"]


# ---------------------------------------------------------------- the arithmetic, without a host


def test_a_copy_is_the_current_version_with_drill_build_metadata():
    assert copy_name("0.0.42", "20261127T030000Z") == "0.0.42+drill.20261127T030000Z"
    assert copy_name("1.0.0+abc", "20261127T030000Z") == "1.0.0+drill.20261127T030000Z"


def test_downtime_runs_from_each_stop_to_the_end_of_that_users_next_live_check():
    # the swap's own marks, as swap and verify leave them: stop, then verified when the live check passed
    marks = [UserMark(at, user, what) for at, user, what in [
        (0.0, "alice", "stop"), (1.0, "bob", "stop"), (2.1, "alice", "start"), (2.5, "bob", "start"),
        (4.0, "alice", "verified"), (5.0, "bob", "verified"),
        (5.0, "alice", "stop"), (6.0, "bob", "stop"), (7.0, "alice", "start"), (8.0, "bob", "start"),
        (9.5, "alice", "verified"), (10.0, "bob", "verified"),
    ]]
    assert downtime(marks, ["alice", "bob"], end=10.0) == {"alice": 4.0 + 4.5, "bob": 4.0 + 4.0}


def test_a_user_stopped_and_never_verified_again_is_down_until_the_swap_ended():
    marks = [UserMark(1.0, "alice", "stop"), UserMark(2.0, "alice", "start")]
    assert downtime(marks, ["alice"], end=7.0) == {"alice": 6.0}
