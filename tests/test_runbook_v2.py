"""The manual rollback of runbooks/t3-version-bump.md on a user first installed on a V2 build
(statev2.sqlite only): the restore step must check and put back the database that user has."""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import sqlite3
import subprocess

import pytest
from tests.test_runbooks import BUMP_RUNBOOK, _make_db, _marked_blocks, _rows


def _backup_v2(live, dest_dir) -> None:
    dest_dir.mkdir(parents=True)
    con = sqlite3.connect(live)
    con.execute("VACUUM INTO ?", (str(dest_dir / "statev2.sqlite"),))
    con.close()
    digest = hashlib.sha256((dest_dir / "statev2.sqlite").read_bytes()).hexdigest()
    (dest_dir / "manifest.json").write_text(json.dumps({"files": {"statev2.sqlite": {"sha256": digest}},
                                                        "created_at": "2026-10-16T02:30:00Z"}))


@pytest.mark.skipif(not shutil.which("sqlite3"), reason="needs sqlite3")
def test_the_manual_restore_step_restores_a_statev2_only_user(tmp_path):
    restore = _marked_blocks(BUMP_RUNBOOK.read_text(encoding="utf-8"), "step")[2]
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    base = tmp_path / "home/.t3"
    live = base / "userdata/statev2.sqlite"
    _make_db(live, migrations=55, rows=["before the swap"])
    _backup_v2(live, tmp_path / "backups" / user / "20261016T023012Z")
    _make_db(live, migrations=56, rows=["after the swap"])
    envs = tmp_path / "envs"
    envs.mkdir()
    (envs / f"{user}.env").write_text(f"T3_PORT=1\nT3_BASE_DIR={base}\n")
    script = (f"USERS={shlex.quote(user)} ENVS={shlex.quote(str(envs))} "
              f"BACKUPS={shlex.quote(str(tmp_path / 'backups'))} SWAP_AT=20261016T033000Z\n{restore}")
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _rows(live, "SELECT title FROM projects") == [("before the swap",)]
    assert not (base / "userdata/state.sqlite").exists()
    assert f"{user}: statev2.sqlite at migration 55" in proc.stdout
    aside = base / "pre-rollback-20261016T033000Z" / "statev2.sqlite"
    assert _rows(aside, "SELECT max(migration_id) FROM effect_sql_migrations") == [(56,)]
