"""A stop signal (`systemctl stop`, the unit's start timeout, an ssh that drops) during a swap is a
request to stop at the next safe point: never users left down, never an unchecked build, always a
history line, no journal left, exit 130 (interrupted) unless a rollback failed.

The signal is sent by t3track to itself right after it writes a journal phase (T3TRACK_FAULT_KILL_AT
with T3TRACK_FAULT_SIGNAL), so it lands exactly between two steps: `stopping` is the moment the
servers begin to stop (before the flip), `flipped` the moment right after `current` moved.
"""

import json

import pytest
from tests.support.host import nightly

pytestmark = pytest.mark.slow


def signalled(host, command: str, phase: str, signal: str = "TERM", *args: str):
    return host.t3track(command, *args, "--json", env={"T3TRACK_FAULT_KILL_AT": phase, "T3TRACK_FAULT_SIGNAL": signal})


def last(host, event):
    return next(e for e in reversed(host.history()) if e["event"] == event)


def test_sigterm_right_after_the_flip_finishes_the_swap_checked_live_and_exits_130(host):
    v = nightly(1)
    host.publish(v, migrations=53)
    rows = {u.name: host.rows(u) for u in host.users}
    done = signalled(host, "run", "flipped")
    assert done.returncode == 130, done.stderr
    doc = json.loads(done.stdout)
    assert doc["outcome"] == "swapped" and doc["to"] == v
    assert {(g["name"], g["outcome"]) for g in doc["gates"] if g["name"] == "live-verify"} == {("live-verify", "pass")}
    assert any("SIGTERM arrived during the swap" in n for n in doc["notes"])
    host.assert_settled(v, rows)
    run = last(host, "run")
    assert run["outcome"] == "swapped" and run["to"] == v


def test_sigterm_right_after_the_flip_of_a_build_failing_live_rolls_it_back_and_denies_it(host):
    v = nightly(1)
    host.publish(v, migrations=53, fault="no-cookie-live")
    rows = {u.name: host.rows(u) for u in host.users}
    done = signalled(host, "run", "flipped")
    assert done.returncode == 130, done.stderr
    assert json.loads(done.stdout)["outcome"] == "rolled_back"
    host.assert_settled("0.0.42", rows)
    for user in host.users:
        assert host.max_migration(user) == 52  # the candidate's migration was undone with the database
    assert any(d["version"] == v for d in host.state()["denied"])  # it failed live: that is its fault
    assert last(host, "run")["outcome"] == "rolled_back"


def test_sigterm_while_the_servers_stop_puts_every_user_back_on_the_old_version(host):
    v = nightly(1)
    host.publish(v, migrations=53)
    rows = {u.name: host.rows(u) for u in host.users}
    refusals = host.state().get("consecutive_refusals", 0)
    done = signalled(host, "run", "stopping")
    assert done.returncode == 130, done.stderr
    doc = json.loads(done.stdout)
    assert doc["outcome"] == "rolled_back" and "stopped by SIGTERM before the flip" in doc["reason"]
    host.assert_settled("0.0.42", rows)
    state = host.state()
    assert not any(d["version"] == v for d in state["denied"])         # nobody's failure: still eligible
    assert state.get("consecutive_refusals", 0) == refusals
    assert last(host, "run")["outcome"] == "rolled_back"
    # the next night takes the same candidate, as if nothing had happened
    again = host.t3track("run", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["outcome"] == "swapped"
    host.assert_settled(v, rows)


def test_sigterm_before_any_server_stops_changes_nothing_and_is_recorded(host):
    v = nightly(1)
    host.publish(v)
    pids = host.server_pids()
    rows = {u.name: host.rows(u) for u in host.users}
    done = signalled(host, "run", "planned")
    assert done.returncode == 130, done.stderr
    doc = json.loads(done.stdout)
    assert doc["outcome"] == "error" and "before any server was stopped" in doc["reason"]
    assert host.server_pids() == pids                                   # nobody was restarted
    host.assert_settled("0.0.42", rows)
    assert last(host, "run")["outcome"] == "error"
    assert not any(d["version"] == v for d in host.state()["denied"])


def test_sighup_during_a_revert_leaves_every_user_serving(host):
    v = nightly(1)
    host.publish(v)
    assert host.t3track("run").returncode == 0
    rows = {u.name: host.rows(u) for u in host.users}
    done = signalled(host, "revert", "stopping", "HUP")
    assert done.returncode == 130, done.stdout + done.stderr
    host.assert_settled(v, rows)                      # the revert never flipped: back where it started
    assert last(host, "revert")


def test_the_night_that_recovers_a_killed_swap_by_rolling_back_says_so_and_notifies(host):
    v = nightly(1)
    host.publish(v, migrations=53, fault="no-cookie-live")
    killed = host.t3track("run", env={"T3TRACK_FAULT_KILL_AT": "rolling_back"})
    assert killed.returncode == -9
    after = host.t3track("run", "--json")
    doc = json.loads(after.stdout)
    assert after.returncode == 1, after.stderr                      # not a quiet `noop`, exit 0
    assert doc["outcome"] == "rolled_back" and doc["recovered"].startswith("rolled_back")
    assert "rolled_back an interrupted run" in doc["reason"]
    assert last(host, "run")["outcome"] == "rolled_back"
    assert any(d["version"] == v for d in host.state()["denied"])


# ---------------------------------------------------------------- faults around the swap (faults review)


def test_a_state_dir_filling_during_the_stops_still_puts_every_server_back(host):
    """state_dir fills the moment the servers stop (a 64 MiB tmpfs, filled by the stop command) and
    empties again by the time they start: the snapshot and the journal cannot be written, and still
    every server is stopped, left on the old version, started and checked; the candidate is not blamed."""
    import shutil
    import subprocess

    v = nightly(1)
    host.publish(v, migrations=53)
    rows = {u.name: host.rows(u) for u in host.users}
    saved = host.dir / "state-saved"
    shutil.copytree(host.state_dir, saved, symlinks=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "t3track-test", str(host.state_dir)], check=True)
    filler = host.state_dir / "filler"
    services = host.config_dict()["services"]
    try:
        shutil.copytree(saved, host.state_dir, symlinks=True, dirs_exist_ok=True)
        host.write_config(services={
            "stop": ["sh", "-c", f'dd if=/dev/zero of={filler} bs=1M count=80 2>/dev/null; exec "$@"', "fill", *services["stop"]],
            "start": ["sh", "-c", f'rm -f {filler}; exec "$@"', "empty", *services["start"]]})
        done = host.t3track("run", "--json")
        assert done.returncode == 1, done.stdout + done.stderr
        doc = json.loads(done.stdout)
        assert doc["outcome"] == "rolled_back" and "No space left on device" in doc["reason"], doc["reason"]
        host.assert_settled("0.0.42", rows)
        state = host.state()
        assert state["frozen"] is None
        assert not any(d["version"] == v for d in state["denied"]) and not state.get("failures", {}).get(v)
        assert last(host, "run")["outcome"] == "rolled_back"
    finally:
        host.write_config(services=services)
        host.stop_servers()
        subprocess.run(["umount", str(host.state_dir)], check=False)


def test_a_managed_host_without_state_json_never_acts_as_a_first_install(host):
    v = nightly(1)
    host.publish(v, fault="no-cookie-live")
    pids = host.server_pids()
    (host.state_dir / "state.json").unlink()
    done = host.t3track("run", "--json")
    assert done.returncode == 4, done.stdout + done.stderr
    doc = json.loads(done.stdout)
    assert "state.json is missing" in doc["error"] and "t3track adopt 0.0.42" in doc["hint"]
    assert not (host.state_dir / "state.json").exists()         # nothing recorded that would make it "new"
    assert host.server_pids() == pids and host.current_target() == "versions/0.0.42"
    assert not (host.root / "versions" / v).exists()              # nothing installed either


def test_a_rollback_target_without_its_executable_is_refused_before_any_server_stops(host):
    v = nightly(1)
    host.publish(v)
    pids = host.server_pids()
    (host.root / "versions" / "0.0.42" / host.executable).unlink()  # the servers run on, from the open file
    done = host.t3track("run", "--json")
    assert done.returncode == 3, done.stdout + done.stderr
    doc = json.loads(done.stdout)
    assert doc["outcome"] == "error" and "rollback would go back to, 0.0.42, has no executable" in doc["reason"]
    assert host.server_pids() == pids and host.current_target() == "versions/0.0.42"
    assert not (host.state_dir / "journal.json").exists()



def test_a_live_check_that_meets_the_old_version_serving_is_the_hosts_fault(host):
    """A server started by hand between the stop and the flip (faults review M1) keeps the old version
    answering on the user's port: the live check fails, and the swap calls it the host's fault (the
    candidate never had its chance), so the candidate is not denied."""
    from t3track.night import swap
    from t3track.night.journal import Journal, Phase
    from t3track.results import LIVE_VERIFY, GateResult

    v = nightly(1)
    config = host.config()
    alice = config.users[0]
    journal = Journal(run_id="m1", from_version="0.0.42", to_version=v, phase=Phase.STARTED,
                      started_at="2026-12-06T00:00:00Z", updated_at="2026-12-06T00:00:00Z")
    failed = [GateResult(LIVE_VERIFY, alice.name, "fail", 1.0, "reports 0.0.42"),
              GateResult(LIVE_VERIFY, config.users[1].name, "pass", 1.0, "ok")]
    assert swap._old_version_answering(config, journal, failed) == [alice.name]  # her 0.0.42 still answers
    host.service("stop", host.user(alice.name))
    assert swap._old_version_answering(config, journal, failed) == []            # nobody answering: the candidate's
