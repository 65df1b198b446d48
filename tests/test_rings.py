"""Rings end to end on an emulated host: canary first, the rest after the soak.

Two rings (canary: alice; everyone: bob and carol), real registry, real installs, real servers under
the supervisor starting each user through root/users/<user>. Time passes by moving the `served`
stretches in state.json back (the soak is measured on them), never by sleeping.
"""

from __future__ import annotations

import json
import os
import signal
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from tests.support.host import Host, build_host, nightly, wait_for_version

pytestmark = pytest.mark.slow

RINGS = [{"name": "canary", "users": ["alice"]}, {"name": "everyone", "users": ["bob", "carol"], "soak": "24h"}]


@pytest.fixture
def ringed(tmp_path: Path):
    h = build_host(tmp_path / "host", users=("alice", "bob", "carol"), rings=RINGS)
    assert h.t3track("backup").returncode == 0
    yield h
    h.close()


def run(host: Host, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict]:
    """One night: the daily backup (t3-backup-state.timer), then `t3track run`."""
    assert host.t3track("backup").returncode == 0
    result = host.t3track("run", "--json", *args, env=env)
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def age(host: Host, ring: str, hours: float) -> None:
    """Let `hours` pass for ring's served stretches (what a later ring's soak is measured on)."""
    path = host.state_dir / "state.json"
    state = json.loads(path.read_text())
    for stretch in state["rings"][ring]["served"]:
        for key in ("since", "until"):
            if stretch.get(key):
                moment = datetime.fromisoformat(stretch[key]) - timedelta(hours=hours)
                stretch[key] = moment.isoformat()
    path.write_text(json.dumps(state))


def link(host: Host, *parts: str) -> str:
    return os.readlink(host.root.joinpath(*parts))


def test_canary_first_the_rest_after_the_soak_a_newer_nightly_mid_soak_restarts_it(ringed):
    host = ringed
    alice, bob, carol = host.users
    pids = host.server_pids()
    v1, v2 = nightly(1), nightly(2)
    host.publish(v1, migrations=53)

    code, doc = run(host)  # night 1: the canary takes the nightly, nobody else moves
    assert code == 0 and doc["outcome"] == "swapped" and doc["ring"] == "canary" and doc["to"] == v1
    assert link(host, "current") == f"versions/{v1}"
    assert link(host, "rings", "everyone") == "../versions/0.0.42"
    assert link(host, "users", "alice") == "../current" and link(host, "users", "bob") == "../rings/everyone"
    assert host.serving(alice) == v1 and host.serving(bob) == "0.0.42" and host.serving(carol) == "0.0.42"
    after = host.server_pids()
    assert after["bob"] == pids["bob"] and after["carol"] == pids["carol"]  # never restarted
    assert after["alice"] != pids["alice"]
    assert {g["user"] for g in doc["gates"] if g["name"] == "sandbox-serve"} == {"alice"}  # the ring's gates only
    assert host.max_migration(bob) == 52
    run_line = [e for e in host.history() if e["event"] == "run"][-1]
    assert run_line["ring"] == "canary" and run_line["to"] == v1
    prom = (host.state_dir / "metrics" / "t3track.prom").read_text()
    assert f't3track_ring_version_info{{previous="0.0.42",ring="canary",version="{v1}"}} 1.0' in prom
    assert 't3track_ring_version_info{previous="",ring="everyone",version="0.0.42"} 1.0' in prom
    assert 't3track_last_run_ring_info{ring="canary"} 1.0' in prom

    code, doc = run(host)  # night 2: still soaking; the canary's live servers are re-checked
    assert code == 0 and doc["outcome"] == "noop"
    assert [(g["name"], g["user"], g["outcome"]) for g in doc["gates"]][:1] == [("live-recheck", "alice", "pass")]
    assert any("everyone" in n and "soak" in n for n in doc["notes"]), doc["notes"]
    assert host.serving(bob) == "0.0.42"

    age(host, "canary", 12)
    host.publish(v2, migrations=54)
    code, doc = run(host)  # night 3: a newer nightly mid-soak; v1 served the canary 12h of 24h
    assert code == 0 and doc["ring"] == "canary" and doc["to"] == v2, doc
    assert host.serving(alice) == v2 and host.serving(bob) == "0.0.42"

    age(host, "canary", 13)  # v1 served 12h then gave way; v2 has served 13h
    code, doc = run(host)
    assert code == 0 and doc["outcome"] == "noop", doc
    assert host.serving(bob) == "0.0.42"

    age(host, "canary", 11)  # v2 has served the canary 24h, every re-check passing
    code, doc = run(host)  # night 5: everyone takes v2 (v1 never soaked: it is skipped)
    assert code == 0 and doc["outcome"] == "swapped" and doc["ring"] == "everyone" and doc["to"] == v2, doc
    assert doc["from"] == "0.0.42"
    assert link(host, "rings", "everyone") == f"../versions/{v2}"
    for user in (bob, carol):
        assert host.serving(user) == v2 and host.max_migration(user) == 54
    assert host.server_pids()["alice"] == after["alice"] or host.serving(alice) == v2
    state = host.state()
    assert state["current"] == v2 and state["rings"]["everyone"]["current"] == v2
    assert state["rings"]["everyone"]["previous"] == "0.0.42"

    status = json.loads(host.t3track("--json", "status").stdout)
    rings = {r["name"]: r for r in status["rings"]}
    assert rings["canary"]["current"] == v2 and rings["everyone"]["current"] == v2
    assert rings["everyone"]["soak"] == 86400 and rings["canary"]["soaked_s"] >= 24 * 3600
    users = {u["name"]: u for u in status["users"]}
    assert users["bob"]["ring"] == "everyone" and users["bob"]["linked"] == v2 and users["bob"]["serving"] == v2
    text = host.t3track("status").stdout
    assert "rings" in text and "everyone" in text


def test_a_canary_live_failure_denies_the_version_for_every_ring(ringed):
    host = ringed
    alice, bob, _ = host.users
    v1 = nightly(1)
    host.publish(v1, migrations=53)
    assert host.t3track("dry-run").returncode == 0
    host.set_fault(v1, "no-cookie-live")
    code, doc = run(host)
    assert code == 1 and doc["outcome"] == "rolled_back" and doc["ring"] == "canary"
    assert host.serving(alice) == "0.0.42" and host.max_migration(alice) == 52
    state = host.state()
    assert any(d["version"] == v1 for d in state["denied"])
    age(host, "canary", 48)
    code, doc = run(host)  # nothing newer soaked; the denied version is never offered to everyone
    assert code == 0 and doc["outcome"] == "noop"
    assert host.serving(bob) == "0.0.42" and link(host, "rings", "everyone") == "../versions/0.0.42"


def test_a_later_rings_live_failure_rolls_back_that_ring_only_and_denies_the_version(ringed):
    host = ringed
    alice, bob, carol = host.users
    told = host.dir / "told.json"
    host.write_config(notify={"command": ["/bin/sh", "-c", 'cat > "$0"; echo "$1" >> "$0.ring"', str(told), "{ring}"]})
    v1 = nightly(1)
    host.publish(v1, migrations=53)
    assert run(host)[1]["ring"] == "canary"
    age(host, "canary", 25)
    # the build breaks for every server started from now on; alice's keeps running as it was
    host.set_fault(v1, "no-cookie-live")
    for user in (bob, carol):
        host.write_rows(user, 2, "before")
    rows = {u.name: host.rows(u) for u in (bob, carol)}
    code, doc = run(host)
    assert code == 1 and doc["outcome"] == "rolled_back" and doc["ring"] == "everyone", doc
    assert link(host, "rings", "everyone") == "../versions/0.0.42"
    for user in (bob, carol):
        assert host.serving(user) == "0.0.42" and host.max_migration(user) == 52
        assert host.rows(user) == rows[user.name]
    assert host.serving(alice) == v1  # the canary was not part of this move
    assert any(d["version"] == v1 for d in host.state()["denied"])
    body = json.loads(told.read_text())
    assert body["event"] == "rolled_back" and body["ring"] == "everyone" and body["candidate"] == v1
    assert (host.dir / "told.json.ring").read_text().split() == ["everyone"]


def test_a_failed_live_recheck_rolls_the_canary_back_and_denies_the_version(ringed):
    host = ringed
    alice, bob, _ = host.users
    v1 = nightly(1)
    host.publish(v1, migrations=53)
    assert run(host)[1]["ring"] == "canary"
    host.set_fault(v1, "no-cookie-live")
    host.service("stop", alice)  # alice's server restarts on the broken build (a crash, a reboot)
    host.service("start", alice)
    bob_pid = host.server_pids()["bob"]
    code, doc = run(host)
    assert code == 1 and doc["outcome"] == "rolled_back" and doc["ring"] == "canary", doc
    assert doc["from"] == v1 and doc["to"] == "0.0.42"
    assert any(g["name"] == "live-recheck" and g["outcome"] == "fail" for g in doc["gates"])
    assert link(host, "current") == "versions/0.0.42"
    assert wait_for_version(alice.url, "0.0.42", timeout=20)
    denial = next(d for d in host.state()["denied"] if d["version"] == v1)
    assert denial["gate"] == "live-recheck"
    assert host.server_pids()["bob"] == bob_pid
    assert host.state()["current"] == "0.0.42"
    assert not (host.state_dir / "journal.json").exists()


def test_ring_holds_and_reverts(ringed):
    host = ringed
    alice, bob, _ = host.users
    v1 = nightly(1)
    host.publish(v1, migrations=53)
    assert host.t3track("freeze", "--ring", "canary", "--reason", "canary on holiday").returncode == 0
    code, doc = run(host)
    assert code == 0 and doc["outcome"] == "noop" and host.serving(alice) == "0.0.42"
    assert host.t3track("unfreeze", "--ring", "canary").returncode == 0
    assert run(host)[1]["ring"] == "canary"
    age(host, "canary", 30)
    assert host.t3track("pin", "0.0.42", "--ring", "everyone", "--reason", "payroll week").returncode == 0
    code, doc = run(host)
    assert code == 0 and doc["outcome"] == "noop" and host.serving(bob) == "0.0.42", doc
    assert host.t3track("pin", "1.0.0", "--ring", "nope", "--reason", "x").returncode == 2
    refused = host.t3track("revert")
    assert refused.returncode == 2 and "--ring" in refused.stderr
    bob_pid = host.server_pids()["bob"]
    reverted = host.t3track("--json", "revert", "--ring", "canary")
    assert reverted.returncode == 0, reverted.stderr
    assert host.serving(alice) == "0.0.42" and link(host, "current") == "versions/0.0.42"
    assert host.server_pids()["bob"] == bob_pid
    revert_line = [e for e in host.history() if e["event"] == "revert"][-1]
    assert revert_line["ring"] == "canary"


@pytest.mark.parametrize("phase", ["stopping", "snapshotted", "flipped", "started", "rolling_back"])
def test_a_later_rings_move_killed_at_any_phase_converges_and_never_touches_the_canary(ringed, phase):
    host = ringed
    alice, bob, carol = host.users
    v1 = nightly(1)
    host.publish(v1, migrations=53)
    assert run(host)[1]["ring"] == "canary"
    age(host, "canary", 25)
    if phase == "rolling_back":
        host.set_fault(v1, "no-cookie-live")  # alice's running server is unaffected
    alice_pid = host.server_pids()["alice"]
    killed = host.t3track("run", env={"T3TRACK_FAULT_KILL_AT": phase})
    assert killed.returncode == -signal.SIGKILL
    journal = json.loads((host.state_dir / "journal.json").read_text())
    assert journal["ring"] == "everyone"
    code, doc = run(host)
    assert doc["recovered"], doc
    everyone = host.state()["rings"]["everyone"]["current"]
    assert link(host, "rings", "everyone") == f"../versions/{everyone}"
    for user in (bob, carol):
        assert wait_for_version(user.url, everyone, timeout=20) == everyone
    if phase in ("flipped", "started"):
        assert everyone == v1
    if phase == "rolling_back":
        assert everyone == "0.0.42"
    assert host.server_pids()["alice"] == alice_pid and host.serving(alice) == v1
    assert host.state()["current"] == v1
    assert not (host.state_dir / "journal.json").exists()


def test_a_host_on_the_single_link_migrates_by_itself(tmp_path):
    host = build_host(tmp_path / "host", through="current")  # t3@.service from before rings
    try:
        assert host.t3track("backup").returncode == 0
        pids = host.server_pids()
        v1 = nightly(1)
        host.publish(v1, migrations=53)
        assert host.t3track("freeze", "--reason", "not tonight").returncode == 0
        code, doc = run(host)  # nothing moves; the per-user links are made, no server restarts
        assert code == 0 and doc["outcome"] == "noop"
        for user in host.users:
            assert link(host, "users", user.name) == "../current"
        assert host.server_pids() == pids
        assert host.t3track("unfreeze").returncode == 0
        host.through = "users"  # the new unit is installed (scripts/install-host.sh)
        host.write_config(rings=[{"name": "first", "users": ["alice"]},
                                 {"name": "rest", "users": ["bob"], "soak": "1h"}])
        code, doc = run(host)  # bob's link moves to the new ring's link (same version): no restart
        assert code == 0 and doc["ring"] == "first" and doc["to"] == v1, doc
        assert link(host, "users", "bob") == "../rings/rest" and link(host, "rings", "rest") == "../versions/0.0.42"
        assert host.server_pids()["bob"] == pids["bob"] and host.serving(host.user("bob")) == "0.0.42"
        assert host.serving(host.user("alice")) == v1
    finally:
        host.close()


def test_a_drill_of_one_ring_restarts_only_its_users(ringed):
    host = ringed
    before = host.server_pids()
    drilled = host.t3track("--json", "drill", "--ring", "everyone", "--yes")
    assert drilled.returncode == 0, drilled.stderr
    doc = json.loads(drilled.stdout)
    assert doc["ring"] == "everyone" and doc["passed"] and set(doc["downtime_s"]) == {"bob", "carol"}
    after = host.server_pids()
    assert after["alice"] == before["alice"] and after["bob"] != before["bob"]
    assert link(host, "rings", "everyone") == "../versions/0.0.42" and link(host, "current") == "versions/0.0.42"
    assert host.t3track("drill", "--yes").returncode == 2  # which ring? a host with rings must say


def test_a_server_started_by_hand_in_a_soaking_ring_is_drift_not_a_failed_version(ringed, tmp_path):
    host = ringed
    alice = host.user("alice")
    v1 = nightly(1)
    host.publish(v1, migrations=53)
    assert run(host)[1]["ring"] == "canary"
    host.service("stop", alice)
    # alice starts 0.0.42 by hand on her port (the supervisor, from a root of her own)
    own = tmp_path / "own-root"
    (own / "users").mkdir(parents=True)
    (own / "users" / "alice").symlink_to(host.root / "versions" / "0.0.42")
    argv = [a.replace(str(host.root), str(own)) for a in host.config_dict()["services"]["start"]]
    values = {"user": alice.name, "port": str(alice.port), "base_dir": str(alice.base_dir)}
    import subprocess

    subprocess.run([a.format(**values) for a in argv], check=True, timeout=30)
    wait_for_version(alice.url, "0.0.42", timeout=20)
    code, doc = run(host)
    assert code == 1 and doc["outcome"] == "refused" and doc["reason"].startswith("drift: alice"), doc
    assert not any(d["version"] == v1 for d in host.state()["denied"])  # not the version's fault
    assert link(host, "current") == f"versions/{v1}"
    host.service("stop", alice)


def test_a_user_moved_into_the_canary_moves_with_its_next_swap_not_with_their_old_ring(ringed):
    host = ringed
    bob = host.user("bob")
    v1, v2 = nightly(1), nightly(2)
    host.publish(v1, migrations=53)
    assert run(host)[1]["ring"] == "canary"
    age(host, "canary", 25)
    assert run(host)[1]["ring"] == "everyone"  # bob and carol on v1
    host.publish(v2, migrations=54)
    assert run(host)[1]["ring"] == "canary"  # alice on v2
    host.write_config(rings=[{"name": "canary", "users": ["alice", "bob"]},
                             {"name": "everyone", "users": ["carol"], "soak": "24h"}])
    v3 = nightly(3)
    host.publish(v3, migrations=55)
    bob_pid = host.server_pids()["bob"]
    code, doc = run(host)  # bob is held on v1, so no drift; the canary's swap gates him and moves him to v3
    assert code == 0 and doc["ring"] == "canary" and doc["to"] == v3, doc
    assert {g["user"] for g in doc["gates"] if g["name"] == "sandbox-serve"} == {"alice", "bob"}
    assert link(host, "users", "bob") == "../current" and host.serving(bob) == v3
    assert host.server_pids()["bob"] != bob_pid
    assert host.serving(host.user("carol")) == v1


@pytest.mark.parametrize("phase", ["stopping", "snapshotted", "flipped", "started"])
def test_a_rings_rollback_after_a_failed_recheck_killed_at_any_phase_goes_on_to_the_previous_version(ringed, phase):
    host = ringed
    alice, bob, _ = host.users
    v1 = nightly(1)
    host.publish(v1, migrations=53)
    assert run(host)[1]["ring"] == "canary"
    host.set_fault(v1, "no-cookie-live")
    host.service("stop", alice)
    host.service("start", alice)  # alice's server restarts on the broken build
    bob_pid = host.server_pids()["bob"]
    assert host.t3track("backup").returncode == 0
    killed = host.t3track("run", env={"T3TRACK_FAULT_KILL_AT": phase})
    assert killed.returncode == -signal.SIGKILL
    journal = json.loads((host.state_dir / "journal.json").read_text())
    assert (journal["kind"], journal["ring"], journal["to_version"]) == ("recheck", "canary", "0.0.42")
    code, doc = run(host)
    assert doc["recovered"] and "finished" in doc["recovered"], doc
    assert link(host, "current") == "versions/0.0.42"
    assert wait_for_version(alice.url, "0.0.42", timeout=20)
    state = host.state()
    assert state["current"] == "0.0.42"
    assert next(d for d in state["denied"] if d["version"] == v1)["gate"] == "live-recheck"
    assert host.server_pids()["bob"] == bob_pid
    assert not (host.state_dir / "journal.json").exists()
