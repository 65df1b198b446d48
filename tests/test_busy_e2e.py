"""Busy users are never cut (issue 25): a night whose swap would stop a server while that user's agent
works waits (swap.busy_wait), then leaves the user on the old version, and moves them on a later night.
End to end on the emulated host: its builds run agent turns (emulator.json `agent_turns`) that finish
when their time is up, or are interrupted when their server stops."""

import json
import os
import signal
import time
from pathlib import Path

import pytest
from tests.emulator import package as emu
from tests.support.host import build_host, nightly

pytestmark = pytest.mark.slow

AGENTS = {"agent_turns": True}


def _host(directory: Path, migrations: int = 52, **settings):
    host = build_host(directory, current_migrations=migrations, current_settings={**AGENTS, **settings})
    host.write_config(swap={"busy_wait": "1s"})
    assert host.t3track("backup").returncode == 0
    return host


@pytest.fixture
def host(tmp_path):
    h = _host(tmp_path / "host")
    yield h
    h.close()


@pytest.fixture
def v2_host(tmp_path):
    h = _host(tmp_path / "host", database="statev2", migrations=55)
    yield h
    h.close()


def finish_soon(turn: emu.AgentTurn, seconds: float = 0.3) -> None:
    """The agent's work ends in a moment (the server's own clock finishes it)."""
    with emu.t3emu.connected(turn.db) as conn:
        conn.execute("UPDATE t3emu_agent_turns SET finishes_at = ? WHERE thread_id = ?", (time.time() + seconds,
                                                                                       turn.thread_id))


def wait_for_turn(turn: emu.AgentTurn, state: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while emu.turn_state(turn) != state:
        assert time.monotonic() < deadline, f"the turn is {emu.turn_state(turn)}, not {state}"
        time.sleep(0.1)


def metric(host, name: str, user: str) -> float | None:
    text = (host.state_dir / "metrics" / "t3track.prom").read_text()
    for line in text.splitlines():
        if line.startswith(f'{name}{{user="{user}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return None


def last_run(host):
    return next(e for e in reversed(host.history()) if e["event"] == "run")


def test_a_night_leaves_a_user_whose_agent_works_untouched_and_moves_her_once_idle(host):
    v = nightly(1)
    host.publish(v, migrations=53, **AGENTS)
    alice = host.user("alice")
    turn = emu.start_turn(alice.db, seconds=600)
    pids = host.server_pids()

    night = host.t3track("run", "--json")
    assert night.returncode == 0, night.stderr
    doc = json.loads(night.stdout)
    assert doc["outcome"] == "noop" and doc["candidate"] == v and "held: busy" in doc["reason"]
    assert [(h["user"], h["reason"], h["threads"]) for h in doc["held"]] == [("alice", "busy", [turn.thread_id])]
    # nothing was stopped: the same processes serve the old version (without rings the night is held whole)
    assert host.server_pids() == pids
    assert emu.turn_state(turn) == "running"
    for user in host.users:
        assert host.serving(user) == "0.0.42" and host.linked(user) == "0.0.42"
    assert host.current_target() == "versions/0.0.42"
    # the candidate stays eligible: not counted, not denied
    state = host.state()
    assert state["current"] == "0.0.42" and v not in state["failures"] and not state["denied"]
    assert state["held"]["alice"]["nights"] == 1 and state["held"]["alice"]["version"] == v
    assert "bob" not in state["held"]
    assert last_run(host)["held"] == ["alice:busy"]
    assert not (host.state_dir / "journal.json").exists()
    assert metric(host, "t3track_user_held_nights", "alice") == 1.0
    assert metric(host, "t3track_user_held_nights", "bob") == 0.0
    status = json.loads(host.t3track("--json", "status").stdout)
    assert {u["name"]: (u.get("held") or {}).get("nights") for u in status["users"]} == {"alice": 1, "bob": None}

    # the agent finishes its turn on the server that kept running
    finish_soon(turn)
    wait_for_turn(turn, "completed")
    assert host.server_pids()["alice"] == pids["alice"]

    later = host.t3track("run", "--json")
    assert later.returncode == 0, later.stderr
    assert json.loads(later.stdout)["outcome"] == "swapped"
    for user in host.users:
        assert host.serving(user) == v and host.linked(user) == v
    assert "alice" not in host.state()["held"]
    assert metric(host, "t3track_user_held_nights", "alice") == 0.0


def test_ignore_busy_stops_a_working_agent_and_says_so(host):
    v = nightly(1)
    host.publish(v, **AGENTS)
    turn = emu.start_turn(host.user("alice").db, seconds=600)
    result = host.t3track("run", "--ignore-busy", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["outcome"] == "swapped" and doc["held"] == []
    assert any("--ignore-busy: stopped alice" in note for note in doc["notes"])
    assert emu.turn_state(turn) == "interrupted"  # the stop cut it, as asked
    assert host.serving(host.user("alice")) == v


def test_rows_of_a_server_that_is_not_running_hold_nobody(host):
    """After a crash the rows keep saying `running`: only a live server's rows are trusted."""
    v = nightly(1)
    host.publish(v, **AGENTS)
    alice = host.user("alice")
    turn = emu.start_turn(alice.db, seconds=600)
    os.killpg(host.server_pids()["alice"], signal.SIGKILL)  # no chance to mark the turn interrupted
    time.sleep(0.3)
    assert emu.turn_state(turn) == "running"
    result = host.t3track("run", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["outcome"] == "swapped"
    assert host.serving(alice) == v


def test_a_user_at_work_is_waited_for_and_moved_when_the_turn_ends_within_busy_wait(host):
    v = nightly(1)
    host.publish(v, **AGENTS)
    host.write_config(swap={"busy_wait": "60s"})
    assert host.t3track("dry-run").returncode == 0  # installed and rehearsed: the night below is mostly its wait
    turn = emu.start_turn(host.user("alice").db, seconds=600)
    finish_soon(turn, 4)
    result = host.t3track("run", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["outcome"] == "swapped"
    assert emu.turn_state(turn) == "completed"  # finished before the stop, never interrupted
    assert "waiting up to 60s" in result.stderr


def test_a_v2_build_is_asked_through_its_v2_tables(v2_host):
    host = v2_host
    base = "0.0.46"
    v = nightly(1, base=base)
    host.publish(v, migrations=55, database="statev2", **AGENTS)
    bob = host.user("bob")
    assert bob.db.name == "statev2.sqlite"
    turn = emu.start_turn(bob.db, seconds=600, v2=True)
    pids = host.server_pids()
    night = host.t3track("run", "--json")
    assert night.returncode == 0, night.stderr
    doc = json.loads(night.stdout)
    assert [(h["user"], h["what"]) for h in doc["held"]] == [("bob", ["run active"])]
    assert host.server_pids() == pids and emu.turn_state(turn) == "running"

    finish_soon(turn)
    wait_for_turn(turn, "completed")
    later = host.t3track("run", "--json")
    assert json.loads(later.stdout)["outcome"] == "swapped", later.stderr
    assert host.serving(bob) == v


RINGS = [{"name": "canary", "users": ["alice"]}, {"name": "everyone", "users": ["bob", "carol"], "soak": "24h"}]


def test_with_rings_a_user_at_work_holds_their_rings_move_only(tmp_path):
    host = build_host(tmp_path / "host", users=("alice", "bob", "carol"), rings=RINGS, current_settings=AGENTS)
    try:
        host.write_config(swap={"busy_wait": "1s"})
        assert host.t3track("backup").returncode == 0
        v = nightly(1)
        host.publish(v, **AGENTS)
        first = host.t3track("run", "--json")
        assert json.loads(first.stdout)["outcome"] == "swapped", first.stderr  # the canary moves
        state = json.loads((host.state_dir / "state.json").read_text())
        for stretch in state["rings"]["canary"]["served"]:  # a day passes for the soak
            stretch["since"] = "2026-01-01T00:00:00+00:00"
        (host.state_dir / "state.json").write_text(json.dumps(state))

        turn = emu.start_turn(host.user("bob").db, seconds=600)
        pids = host.server_pids()
        assert host.t3track("backup").returncode == 0
        held = host.t3track("run", "--json")
        doc = json.loads(held.stdout)
        assert held.returncode == 0 and doc["ring"] == "everyone", held.stderr
        assert [h["user"] for h in doc["held"]] == ["bob"]
        # bob's whole ring stays; carol (idle) too, the canary was never touched
        assert host.server_pids() == pids
        assert [host.linked(host.user(u)) for u in ("alice", "bob", "carol")] == [v, "0.0.42", "0.0.42"]

        finish_soon(turn)
        wait_for_turn(turn, "completed")
        moved = host.t3track("run", "--json")
        assert json.loads(moved.stdout)["outcome"] == "swapped", moved.stderr
        assert [host.linked(host.user(u)) for u in ("bob", "carol")] == [v, v]
    finally:
        host.close()
