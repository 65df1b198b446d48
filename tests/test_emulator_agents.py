"""The emulator's agents (t3code-contract.md, "Agents, and what a copy can do"; emulator.json
`agent_turns`), proven on their own before t3track is tested against them: a turn runs until its time
is up, a SIGTERM interrupts it (the rows flip as the server stops), a SIGKILL leaves the rows saying
`running`; V1 tables in state.sqlite builds, V2 tables in statev2.sqlite builds. And the 0.1.x
refusals at start (`refuse-*` faults)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from tests.emulator import package as emu

V2 = "0.0.46-nightly.20261003.2610"


def wait_for(turn: emu.AgentTurn, state: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while emu.turn_state(turn) != state:
        assert time.monotonic() < deadline, emu.turn_state(turn)
        time.sleep(0.05)


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
def test_a_turn_runs_until_its_time_is_up_and_a_sigterm_interrupts_the_others(tmp_path, stop_later, v2):
    state = emu.make_user_state(tmp_path / "base", rows=1)
    exe = emu.make_install(tmp_path / "build", V2 if v2 else "0.0.42", migrations=55 if v2 else 52,
                           agent_turns=True, **({"database": "statev2"} if v2 else {}))
    server = emu.start_server(exe, state.base_dir)
    stop_later(server)
    db = emu.live_db(state.base_dir)
    assert db.name == ("statev2.sqlite" if v2 else "state.sqlite")
    short = emu.start_turn(db, seconds=0.5, v2=v2)
    long = emu.start_turn(db, seconds=600, v2=v2)
    wait_for(short, "completed")
    assert emu.turn_state(long) == "running"
    server.stop()
    assert emu.turn_state(long) == "interrupted"


def test_after_a_sigkill_the_rows_keep_saying_running(tmp_path, stop_later):
    state = emu.make_user_state(tmp_path / "base", rows=1)
    exe = emu.make_install(tmp_path / "build", "0.0.42", agent_turns=True)
    server = emu.start_server(exe, state.base_dir)
    stop_later(server)
    turn = emu.start_turn(state.db, seconds=600)
    os.killpg(server.pid, signal.SIGKILL)
    time.sleep(0.3)
    assert emu.turn_state(turn) == "running"


@pytest.mark.parametrize("fault,text", [
    ("refuse-owned", "A T3 Code server already owns"),
    ("refuse-service", "A background service for this T3 home"),
    ("refuse-update-pending", "An interrupted server update requires recovery"),
])
def test_each_0_1_refusal_exits_at_once_with_its_text(tmp_path, fault, text):
    state = emu.make_user_state(tmp_path / "base", rows=1)
    exe = emu.make_install(tmp_path / "build", "0.1.11", fault=fault)
    done = subprocess.run([str(exe), "serve", "--port", str(emu.free_port()), "--base-dir", str(state.base_dir)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 78 and text in done.stderr
    assert not (state.base_dir / "userdata" / "server-runtime.json").exists()
