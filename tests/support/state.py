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


PRIVATE_IN_THE_BOX = ("/tmp", "/var/tmp", "/run")  # t3track.host.confine.PRIVATE_DIRS: empty inside a rehearsal


def visible_python() -> str:
    """A Python a confined rehearsal can run: the system's, not a virtualenv's that may lie under /tmp
    (a checkout cloned there, as CI may do), which the box hides. Stand-ins use the standard library only."""
    return "/usr/bin/python3" if Path("/usr/bin/python3").is_file() else sys.executable


def outside_the_box(repo: Path) -> Path:
    """A directory for test files a rehearsal's box must see (stand-ins on PATH, a user's projects):
    the checkout's .cache, unless the checkout itself lies under a directory the box hides."""
    if not any(str(repo).startswith(private + "/") for private in PRIVATE_IN_THE_BOX):
        return repo / ".cache"
    return Path("/var/cache/t3track-tests")


def script(tmp_path: Path, body: str, name: str = "t3") -> Path:
    """A stand-in executable for the ways a candidate fails before it serves."""
    path = tmp_path / name
    path.write_text(f"#!{visible_python()}\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path
