"""Read-only SQLite for T3 state: connections that never write, deadlines SQLite itself obeys, the
migration history, and quick checks. Used by backups, snapshots, the sandbox and the rollback's test."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from t3track.host.manifest import BackupError, BackupTimeout
from t3track.host.t3db import DATABASES, MIGRATIONS_TABLE, Migration

_UNBOUNDED_BUSY_S = 60.0  # busy wait of a step that has no deadline (snapshot without a timeout)


class Deadline:
    """One time budget for every step of a backup; `None` seconds means no budget."""

    def __init__(self, seconds: float | None, what: str, *, user: str | None = None):
        self.seconds = seconds
        self.what = what
        self.user = user
        self.end = None if seconds is None else time.monotonic() + seconds

    def remaining(self) -> float | None:
        return None if self.end is None else self.end - time.monotonic()

    def expired(self) -> bool:
        return self.end is not None and time.monotonic() >= self.end

    def check(self) -> None:
        if self.expired():
            raise BackupTimeout(f"{self.what} timed out after {self.seconds:g}s (backup.timeout)", user=self.user,
                                hint="raise backup.timeout in the config, or look for what holds the database")

    def busy_timeout(self) -> float:
        """sqlite3's busy wait is not interruptible, so it must end by the deadline itself."""
        remaining = self.remaining()
        return _UNBOUNDED_BUSY_S if remaining is None else max(0.0, remaining)


@contextmanager
def interrupt_after(conn: sqlite3.Connection, deadline: Deadline) -> Iterator[None]:
    """Run SQLite work that `Connection.interrupt()` stops at the deadline (a timer thread calls it)."""
    deadline.check()
    remaining = deadline.remaining()
    timer = None if remaining is None else threading.Timer(remaining, conn.interrupt)
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        yield
    except sqlite3.Error:
        deadline.check()  # interrupted, or busy until the deadline: say it timed out
        raise
    finally:
        if timer is not None:
            timer.cancel()
            timer.join()  # never let it call interrupt() on a closed connection
    deadline.check()  # finished, but late: a step that raced the timer counts as timed out too


def connect_ro(path: Path, busy_timeout: float = 5.0) -> sqlite3.Connection:
    # mode=ro never writes the database file itself; on a WAL database SQLite still maps (and may
    # create) the -shm/-wal files, owned like the database even when we run as root.
    return sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=busy_timeout)


def max_migration_id(db_path: Path) -> int | None:
    """Highest `effect_sql_migrations.migration_id`, or None when the table is absent."""
    try:
        conn = connect_ro(db_path)
        try:
            has_table = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                     (MIGRATIONS_TABLE,)).fetchone()
            if not has_table:
                return None
            value = conn.execute(f"SELECT max(migration_id) FROM {MIGRATIONS_TABLE}").fetchone()[0]
            return int(value) if value is not None else None
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise BackupError(f"cannot read the migrations of {db_path}: {exc}",
                          hint="check that the file exists and is a readable SQLite database") from None


def quick_check_problem(path: Path) -> str | None:
    try:
        conn = connect_ro(path)
        try:
            rows = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return str(exc)
    return None if rows == ["ok"] else "; ".join(rows[:3])


def read_migrations(db_path: Path) -> list[Migration]:
    """Rows of effect_sql_migrations (forward-only; PRAGMA user_version stays 0), [] when absent."""
    if not db_path.is_file():
        return []
    try:
        connection = connect_ro(db_path)
    except sqlite3.Error:
        return []
    try:
        rows = connection.execute(
            f"SELECT migration_id, name FROM {MIGRATIONS_TABLE} ORDER BY migration_id").fetchall()
    except sqlite3.Error:
        return []
    finally:
        connection.close()
    return [Migration(int(row[0]), str(row[1])) for row in rows]


def migration_history(db_path: Path) -> list[Migration]:
    """Like read_migrations, but a database that cannot be read raises BackupError (callers that must
    not mistake "unreadable" for "no migrations", such as the rollback's migrated test)."""
    try:
        conn = connect_ro(db_path)
        try:
            if not conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                (MIGRATIONS_TABLE,)).fetchone():
                return []
            rows = conn.execute(f"SELECT migration_id, name FROM {MIGRATIONS_TABLE} ORDER BY migration_id").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise BackupError(f"cannot read the migrations of {db_path}: {exc}",
                          hint="check that the file exists and is a readable SQLite database") from None
    return [Migration(int(row[0]), str(row[1])) for row in rows]


def added(before: list[Migration], after: list[Migration]) -> list[Migration]:
    """Migrations of `after` that `before` lacks, as (id, name) identities: a preview build's 53 under
    another name is not the nightly's 53, whatever the highest id says."""
    known = set(before)
    return [m for m in after if m not in known]


def database_in_use(userdata: Path) -> str | None:
    """The name of the database the server uses (statev2 when a build has moved to it), or None."""
    for name in DATABASES:
        if read_migrations(userdata / name):
            return name
    return None


def database_migrations(userdata: Path) -> list[Migration]:
    """The migrations of the database the server uses (statev2 when a build has moved to it)."""
    for name in DATABASES:
        rows = read_migrations(userdata / name)
        if rows:
            return rows
    return []
