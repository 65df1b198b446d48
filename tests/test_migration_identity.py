"""Migrations are identities, (migration_id, name), never the highest id: preview builds recorded other
names under the same ids (t3code-contract.md, "Migration ids are not identities")."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from tests.emulator import package as emu
from tests.support.host import nightly

from t3track.config import UserConfig
from t3track.night.gates import check_backup_present
from t3track.night.swap import _migrated

pytestmark = pytest.mark.slow

PREVIEW_53 = "OrchestrationV2"   # what a preview build recorded at 53 (contract: "V2 at 53 then 54")


def record_preview_migration(db: Path, migration_id: int = 53, name: str = PREVIEW_53) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute(f"CREATE TABLE IF NOT EXISTS preview_change_{migration_id} (id INTEGER PRIMARY KEY)")
        conn.execute("INSERT INTO effect_sql_migrations (migration_id, name) VALUES (?, ?)", (migration_id, name))


def rename(db: Path, migration_id: int, name: str) -> None:
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE effect_sql_migrations SET name = ? WHERE migration_id = ?", (name, migration_id))


def sandbox_gate(doc: dict) -> dict:
    return next(g for g in doc["gates"] if g["name"] == "sandbox-serve")


def test_the_sandbox_gate_names_a_history_the_candidate_knows_under_other_names(host):
    for user in host.users:
        record_preview_migration(user.db)
    assert host.t3track("backup").returncode == 0
    host.publish(nightly(1), migrations=55, database="statev2", history_check="warn")
    result = host.t3track("dry-run", "--json")
    doc = json.loads(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    detail = sandbox_gate(doc)["detail"]
    assert "diverged migration history" in detail
    assert f"53:{PREVIEW_53} (this build: EmulatedNightlyChange53)" in detail
    # one-way migrations are still named, as pairs: the candidate skips 53 and adds 54 and 55
    assert "one-way: adds 54_EmulatedNightlyChange54, 55_EmulatedNightlyChange55" in detail


def test_the_0_1_wording_of_the_history_warning_is_read_like_the_old_one(host):
    for user in host.users:
        record_preview_migration(user.db)
    assert host.t3track("backup").returncode == 0
    host.publish(nightly(1, base="0.1.11"), migrations=55, database="statev2", history_check="warn-legacy")
    result = host.t3track("dry-run", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    detail = sandbox_gate(json.loads(result.stdout))["detail"]
    assert "diverged migration history" in detail
    assert f"53:{PREVIEW_53} (this build: EmulatedNightlyChange53)" in detail


def test_a_candidate_refusing_the_history_fails_sandbox_serve_with_its_own_line(host):
    for user in host.users:
        record_preview_migration(user.db)
    assert host.t3track("backup").returncode == 0
    v = nightly(1)
    host.publish(v, migrations=55, database="statev2", history_check="refuse")
    result = host.t3track("run", "--json")
    doc = json.loads(result.stdout)
    assert result.returncode == 1 and doc["outcome"] == "refused", result.stdout + result.stderr
    gate = sandbox_gate(doc)
    assert gate["outcome"] == "fail"
    assert gate["detail"].startswith(f"alice: {v} (") and \
        f"refuses the database: Unrecognized migration history at 53:{PREVIEW_53};" in gate["detail"]
    assert host.current_target() == "versions/0.0.42"
    assert host.history()[-1]["outcome"] == "refused"


def test_backup_present_fails_when_the_live_database_recorded_an_id_under_another_name(host):
    alice = host.user("alice")
    record_preview_migration(alice.db)
    assert host.t3track("backup", "--user", "alice").returncode == 0
    rename(alice.db, 53, "PeerLinks")          # same highest id, another history
    check = check_backup_present(host.config(), host.config().user("alice"))
    assert not check.ok and "53_PeerLinks" in check.detail and "the backup lacks" in check.detail


def test_the_rollback_restores_a_database_whose_id_was_recorded_under_another_name(tmp_path):
    snap = emu.make_user_state(tmp_path / "snap", rows=1).db.parent
    live = emu.make_user_state(tmp_path / "live", rows=1).db.parent
    user = UserConfig(name="alice", base_dir=tmp_path / "live", port=3773)  # read as its owner
    assert not _migrated(snap, user)
    rename(live / "state.sqlite", 52, "PeerLinks")
    assert _migrated(snap, user)
