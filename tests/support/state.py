"""Small state builders the gate and sandbox tests share."""

from __future__ import annotations

import sqlite3
import stat
import sys
from pathlib import Path


def fake_live_state(base: Path, migrations: int = 3) -> Path:
    """A minimal live base dir: a state db with effect_sql_migrations, secrets, settings."""
    userdata = base / "userdata"
    (userdata / "secrets").mkdir(parents=True)
    (userdata / "secrets" / "session-signing.bin").write_bytes(b"k" * 32)
    (userdata / "environment-id").write_text("env-1234\n")
    (userdata / "settings.json").write_text("{}")
    (userdata / "server-runtime.json").write_text('{"pid": 1, "port": 38773}')
    db = sqlite3.connect(userdata / "state.sqlite")
    db.execute("CREATE TABLE effect_sql_migrations (migration_id INTEGER PRIMARY KEY, created_at TEXT, name TEXT)")
    db.executemany("INSERT INTO effect_sql_migrations VALUES (?, '2026-01-01', ?)",
                   [(i, f"{i}_Migration{i}") for i in range(1, migrations + 1)])
    db.commit()
    db.close()
    return base


def script(tmp_path: Path, body: str, name: str = "t3") -> Path:
    """A stand-in executable for the ways a candidate fails before it serves."""
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path
