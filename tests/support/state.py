"""Small state builders the gate and sandbox tests share."""

from __future__ import annotations

import contextlib
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
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


@contextlib.contextmanager
def traversable_for(user: str, path: Path) -> Iterator[None]:
    """Let `user` reach `path` (the checkout and its virtualenv) for a test that runs as that user: a
    checkout cloned into a private directory (`mktemp -d` makes it 0700) is otherwise closed to them.
    Each directory on the way that others cannot enter gets an ACL entry for this user alone, taken
    back afterwards (setfacl, Debian's acl, which scripts/test.sh installs)."""
    opened = []
    try:
        for directory in reversed([path, *path.parents]):
            if not directory.stat().st_mode & 0o001:
                subprocess.run(["setfacl", "-m", f"u:{user}:x", str(directory)], check=True)
                opened.append(directory)
        yield
    finally:
        for directory in opened:
            subprocess.run(["setfacl", "-x", f"u:{user}", str(directory)], check=False)
