"""The emulator's V2-era variants (t3code-contract.md, "Since 0.0.42"), each proven on its own before
t3track is tested against it: statev2.sqlite, migration identities, the ownership lock, T3CODE_*
fallbacks, the credential headers, 30-day sessions."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.emulator import package as emu

V2 = "0.0.46-nightly.20261003.2610"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pairs(db: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return [(r[0], r[1]) for r in conn.execute("SELECT migration_id, name FROM effect_sql_migrations ORDER BY 1")]


def threads(db: Path) -> set[str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return {r[0] for r in conn.execute(f"SELECT thread_id FROM {emu.ROWS_TABLE}")}


def test_a_v2_build_copies_state_once_and_never_writes_it_again(tmp_path, stop_later):
    state = emu.make_user_state(tmp_path / "base", rows=3)
    v1_before = digest(state.db)
    exe = emu.make_install(tmp_path / "v2", V2, migrations=61, database="statev2")
    server = emu.start_server(exe, state.base_dir)
    stop_later(server)
    v2_db = state.base_dir / "userdata" / "statev2.sqlite"
    assert "Imported state.sqlite into statev2.sqlite" in server.output()
    assert threads(v2_db) == set(state.thread_ids)                 # the V1 data came along
    assert pairs(v2_db)[-1] == (61, "EmulatedNightlyChange61")
    pairing = emu.pair(server.url, json.loads(emu.mint(exe, state.base_dir).stdout)["credential"])
    assert pairing.response.status == 200
    emu.add_rows(emu.live_db(state.base_dir), 2, "v2-era")
    server.stop()
    assert digest(state.db) == v1_before                          # state.sqlite frozen at the upgrade
    assert max(n for n, _ in pairs(state.db)) == 52
    assert not [p for p in state.db.parent.iterdir() if p.name.startswith(".v2-import-")]
    inode = v2_db.stat().st_ino
    again = emu.start_server(exe, state.base_dir)
    stop_later(again)
    assert "Imported" not in again.output() and v2_db.stat().st_ino == inode   # once, never again


def test_a_host_first_installed_on_a_v2_build_has_no_state_sqlite(tmp_path, stop_later):
    base = tmp_path / "base"
    exe = emu.make_install(tmp_path / "v2", V2, migrations=61, database="statev2")
    stop_later(emu.start_server(exe, base))
    assert (base / "userdata" / "statev2.sqlite").is_file()
    assert not (base / "userdata" / "state.sqlite").exists()
    made = emu.make_user_state(tmp_path / "made", migrations=61, database="statev2")
    assert made.db.name == "statev2.sqlite" and not (made.db.parent / "state.sqlite").exists()


def test_a_v2_build_warns_about_a_preview_history_and_skips_the_recorded_id(tmp_path, stop_later):
    preview = emu.make_install(tmp_path / "preview", "0.0.46-preview.1", migrations=53, database="statev2",
                               migration_names={"53": "OrchestrationV2"})
    base = tmp_path / "base"
    emu.make_user_state(base, rows=1)
    stop_later(emu.start_server(preview, base))
    exe = emu.make_install(tmp_path / "v2", V2, migrations=54, database="statev2", history_check="warn")
    server = emu.start_server(exe, base)
    stop_later(server)
    assert "Database migration history diverges from this build" in server.output()
    assert "53:OrchestrationV2 (this build: EmulatedNightlyChange53)" in server.output()
    assert pairs(base / "userdata" / "statev2.sqlite")[-2:] == [(53, "OrchestrationV2"), (54, "EmulatedNightlyChange54")]


def test_a_refusing_build_exits_on_an_unrecognized_history(tmp_path):
    base = tmp_path / "base"
    emu.make_user_state(base, rows=1)
    with sqlite3.connect(base / "userdata" / "state.sqlite") as conn:
        conn.execute("UPDATE effect_sql_migrations SET name = 'PeerLinks' WHERE migration_id = 52")
    exe = emu.make_install(tmp_path / "v2", V2, migrations=61, database="statev2", history_check="refuse")
    server = emu.start_server(exe, base, wait=False)
    assert server.proc.wait(timeout=15) == 1
    server.stop()
    assert "Unrecognized migration history at 52:PeerLinks" in server.output()


def test_the_ownership_lock_refuses_a_second_server_and_outlives_the_first(tmp_path, stop_later):
    base = tmp_path / "base"
    emu.make_user_state(base, rows=1)
    exe = emu.make_install(tmp_path / "v2", V2, migrations=61, database="statev2", ownership_lock=True)
    first = emu.start_server(exe, base)
    stop_later(first)
    runtime = json.loads((base / "userdata" / "server-runtime.json").read_text())
    assert runtime["pid"] == first.pid and runtime["ownerId"]
    second = emu.start_server(exe, base, wait=False)
    assert second.proc.wait(timeout=10) == 1
    second.stop()
    assert "ServerAlreadyRunningError" in second.output()
    first.stop()
    assert (base / "userdata" / "server-owner.sqlite").exists()          # never deleted
    assert not (base / "userdata" / "server-runtime.json").exists()
    stop_later(emu.start_server(exe, base))                                 # the lock went with the process


def test_a_runtime_file_naming_a_live_pid_makes_a_new_server_refuse(tmp_path):
    base = tmp_path / "base"
    emu.make_user_state(base, rows=1)
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        (base / "userdata" / "server-runtime.json").write_text(json.dumps(
            {"version": 1, "pid": sleeper.pid, "port": 1, "origin": "http://127.0.0.1:1", "startedAt": "x"}))
        exe = emu.make_install(tmp_path / "v2", V2, migrations=61, ownership_lock=True)
        server = emu.start_server(exe, base, wait=False)
        assert server.proc.wait(timeout=10) == 1
        server.stop()
        assert "T3_STATE_DIR_OWNED" in server.output()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_slow_shutdown_keeps_serving_after_sigterm(tmp_path):
    base = tmp_path / "base"
    emu.make_user_state(base, rows=1)
    exe = emu.make_install(tmp_path / "v2", V2, ownership_lock=True, stop_delay_s=1.5)
    server = emu.start_server(exe, base)
    os.kill(server.pid, 15)
    time.sleep(0.5)
    assert server.proc.poll() is None and (base / "userdata" / "server-runtime.json").exists()
    assert server.stop(grace=5) == 0


def test_serve_flags_fall_back_to_t3code_variables(tmp_path):
    base = tmp_path / "from-env"
    port = emu.free_port()
    exe = emu.make_install(tmp_path / "v2", V2, env_record=str(tmp_path / "env.jsonl"))
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(exe), "serve"], env=emu.server_env({"T3CODE_PORT": str(port), "T3CODE_HOME": str(base)}),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    handle = emu.ServerHandle(proc, port, base, log)
    try:
        handle.wait_ready(15)
        assert (base / "userdata" / "state.sqlite").is_file()
    finally:
        handle.stop()
    seen = json.loads((tmp_path / "env.jsonl").read_text().splitlines()[0])
    assert seen["env"]["T3CODE_PORT"] == str(port) and seen["env"]["T3CODE_HOME"] == str(base)


def test_credential_responses_carry_no_store_unless_the_build_drops_them(tmp_path, stop_later):
    base = tmp_path / "base"
    emu.make_user_state(base, rows=1)
    exe = emu.make_install(tmp_path / "good", V2)
    server = emu.start_server(exe, base)
    stop_later(server)
    good = emu.pair(server.url, json.loads(emu.mint(exe, base).stdout)["credential"])
    assert good.response.header("cache-control") == "no-store" and good.response.header("pragma") == "no-cache"
    expires = datetime.fromisoformat(good.response.json()["expiresAt"].replace("Z", "+00:00"))
    assert abs(expires - (datetime.now(UTC) + timedelta(days=30))) < timedelta(minutes=1)   # 30 days, fixed
    server.stop()
    emu.configure(exe, fault="no-cache-headers")
    server = emu.start_server(exe, base)
    stop_later(server)
    bare = emu.pair(server.url, json.loads(emu.mint(exe, base).stdout)["credential"])
    assert bare.response.status == 200 and bare.cookie_value                 # otherwise a good exchange
    assert bare.response.header("cache-control") is None and bare.response.header("pragma") is None
