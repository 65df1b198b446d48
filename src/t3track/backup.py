"""Backups of each user's T3 state: layout, listing, creation, retention and the backup-present gate.

Layout: backup_dir/<user>/<stamp>/{state.sqlite[, statev2.sqlite], manifest.json}, where <stamp> is
UTC `YYYYMMDDTHHMMSSZ` (sortable). A backup is built in backup_dir/<user>/.<stamp>.partial/ and
renamed into place only when complete, so any directory with a manifest.json is a finished backup and
a dot-directory ending in `.partial` is the leftover of a killed run (removed by the next backup).

The pre-swap snapshot (`snapshot_database`) is the same thing written into a directory the caller
names; `restore_database` (t3track.restore) rebuilds a user's databases from either.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from t3track import __version__
from t3track.config import Config, UserConfig
from t3track.errors import ConfigError, EnvironmentFault
from t3track.fsutil import PRIVATE_DIR, PRIVATE_FILE, atomic_write_text, fsync_dir, make_private_dirs

MANIFEST = "manifest.json"
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
MANIFEST_FORMAT = 1
MAIN_DB = "state.sqlite"
DB_FILES = (MAIN_DB, "statev2.sqlite")  # statev2 only when present: newer builds copy state.sqlite there
MIGRATIONS_TABLE = "effect_sql_migrations"
PARTIAL_SUFFIX = ".partial"
_CHUNK = 1 << 20
_UNBOUNDED_BUSY_S = 60.0  # busy wait of a step that has no deadline (snapshot without a timeout)


class BackupError(EnvironmentFault):
    """A backup could not be made, read or restored; nothing half-done was left behind."""


class BackupTimeout(BackupError):
    """A backup step ran past config.backup.timeout and was interrupted."""


class BackupMismatch(BackupError):
    """A backup does not match its manifest (damaged or changed since it was made): never restored."""


@dataclass(frozen=True)
class BackupInfo:
    user: str
    path: Path
    created_at: datetime
    manifest: dict[str, Any]

    def age_s(self, now: datetime) -> float:
        return (now - self.created_at).total_seconds()

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        """Database file name -> {source, size, sha256, max_migration_id, ...} (validated)."""
        return manifest_files(self)

    def to_json(self) -> dict[str, Any]:
        return {"user": self.user, "path": str(self.path), "created_at": _iso(self.created_at),
                "files": self.manifest.get("files", {})}


@dataclass
class BackupResult:
    """The outcome of one user's backup in `backup_all`: `backup` on success, `error`/`hint` on failure."""

    user: str
    ok: bool
    backup: BackupInfo | None = None
    error: str | None = None
    hint: str | None = None
    duration_s: float = 0.0
    pruned: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"user": self.user, "ok": self.ok,
                "backup": self.backup.to_json() if self.backup else None,
                "error": self.error, "hint": self.hint, "duration_s": round(self.duration_s, 3),
                "pruned": [str(p) for p in self.pruned], "warnings": self.warnings}


@dataclass(frozen=True)
class GateCheck:
    ok: bool
    detail: str
    backup: BackupInfo | None


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _utc(moment: datetime | None) -> datetime:
    if moment is None:
        return datetime.now(timezone.utc)
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _age_text(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _fix(user: str) -> str:
    return f"run `t3track backup --user {user}`"


# ---------------------------------------------------------------- layout and listing


def user_backup_dir(config: Config, user: str) -> Path:
    return config.backup_dir / user


def list_backups(config: Config, user: str) -> list[BackupInfo]:
    """Finished backups of one user, newest first. Unreadable manifests are skipped here and
    reported by the backup-present gate."""
    base = user_backup_dir(config, user)
    if not base.is_dir():
        return []
    found = []
    for entry in base.iterdir():
        if entry.name.startswith(".") or not (entry / MANIFEST).is_file():
            continue
        try:
            found.append(read_backup(entry, user))
        except BackupMismatch:
            continue
    return sorted(found, key=lambda b: b.created_at, reverse=True)


def read_backup(path: Path, user: str) -> BackupInfo:
    """The finished backup (or snapshot) in `path`; BackupMismatch when its manifest is unreadable."""
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        created = datetime.fromisoformat(manifest["created_at"].replace("Z", "+00:00"))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise BackupMismatch(f"{user}: {path / MANIFEST} is missing or unreadable ({exc.__class__.__name__})",
                             hint=f"use another backup, or {_fix(user)}") from None
    return BackupInfo(user, path, _utc(created), manifest)


def newest_backup(config: Config, user: str) -> BackupInfo | None:
    backups = list_backups(config, user)
    return backups[0] if backups else None


def manifest_files(backup: BackupInfo) -> dict[str, dict[str, Any]]:
    """The manifest's file entries, checked for shape, so a changed manifest cannot name other paths."""
    files = backup.manifest.get("files")
    if not isinstance(files, dict) or MAIN_DB not in files:
        raise BackupMismatch(f"{backup.user}: backup {backup.path} has a manifest without {MAIN_DB}",
                             hint=_fix(backup.user))
    for name, entry in files.items():
        if name not in DB_FILES or not isinstance(entry, dict) \
                or not isinstance(entry.get("sha256"), str) or not isinstance(entry.get("size"), int):
            raise BackupMismatch(f"{backup.user}: backup {backup.path} has a malformed manifest entry {name!r}",
                                 hint=_fix(backup.user))
    return files


# ---------------------------------------------------------------- SQLite helpers


class Deadline:
    """One time budget for every step of a backup; `None` seconds means no budget."""

    def __init__(self, seconds: float | None, what: str):
        self.seconds = seconds
        self.what = what
        self.end = None if seconds is None else time.monotonic() + seconds

    def remaining(self) -> float | None:
        return None if self.end is None else self.end - time.monotonic()

    def expired(self) -> bool:
        return self.end is not None and time.monotonic() >= self.end

    def check(self) -> None:
        if self.expired():
            raise BackupTimeout(f"{self.what} timed out after {self.seconds:g}s (backup.timeout)",
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


def _connect_ro(path: Path, busy_timeout: float = 5.0) -> sqlite3.Connection:
    # mode=ro never writes the database file itself; on a WAL database SQLite still maps (and may
    # create) the -shm/-wal files, owned like the database even when we run as root.
    return sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=busy_timeout)


def max_migration_id(db_path: Path) -> int | None:
    """Highest `effect_sql_migrations.migration_id`, or None when the table is absent."""
    try:
        conn = _connect_ro(db_path)
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


def sha256_file(path: Path, deadline: Deadline | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            if deadline is not None:
                deadline.check()
    return digest.hexdigest()


def checksum_problem(backup: BackupInfo) -> str | None:
    """None when every file of the backup has the size and sha256 its manifest records."""
    for name, entry in manifest_files(backup).items():
        path = backup.path / name
        try:
            size = path.stat().st_size
            if size != entry["size"]:
                return f"{name} is {size} bytes, its manifest says {entry['size']}"
            actual = sha256_file(path)
        except OSError as exc:
            return f"cannot read {name}: {exc.strerror}"
        if actual != entry["sha256"]:
            return f"{name} has sha256 {actual[:12]}..., its manifest says {entry['sha256'][:12]}..."
    return None


# ---------------------------------------------------------------- making a backup


def _chown_like(paths: list[Path], source: Path) -> None:
    """Backups are owned like the database they copy (only root can give files away)."""
    if os.geteuid() != 0:
        return
    st = source.stat()
    for path in paths:
        os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _copy_one(source: Path, dest: Path, deadline: Deadline) -> dict[str, Any]:
    """VACUUM INTO `dest` (absent), then integrity_check, migrations and checksum of the copy."""
    started = time.monotonic()
    conn = _connect_ro(source, deadline.busy_timeout())
    try:
        with interrupt_after(conn, deadline):
            conn.execute("VACUUM INTO ?", (str(dest),))
    finally:
        conn.close()
    vacuumed = time.monotonic()
    os.chmod(dest, PRIVATE_FILE)
    fd = os.open(dest, os.O_RDONLY)
    try:
        os.fsync(fd)  # VACUUM INTO does not sync its output
    finally:
        os.close(fd)
    copy = _connect_ro(dest, deadline.busy_timeout())
    try:
        with interrupt_after(copy, deadline):
            rows = [r[0] for r in copy.execute("PRAGMA integrity_check").fetchall()]
    finally:
        copy.close()
    if rows != ["ok"]:
        raise BackupError(f"the copy of {source} fails PRAGMA integrity_check: {'; '.join(rows[:3])}",
                          hint="the live database may be damaged: check it with `sqlite3 FILE 'PRAGMA integrity_check'`")
    checked = time.monotonic()
    migrations = max_migration_id(dest)
    digest = sha256_file(dest, deadline)
    return {"source": str(source), "size": dest.stat().st_size, "sha256": digest,
            "max_migration_id": migrations, "integrity_check": "ok",
            "vacuum_s": round(vacuumed - started, 3), "integrity_check_s": round(checked - vacuumed, 3),
            "sha256_s": round(time.monotonic() - checked, 3)}


def back_up_base_dir(base_dir: Path, target: Path, *, user: str, timeout: timedelta | None,
                     now: datetime | None = None) -> BackupInfo:
    """Back up base_dir/userdata/{state,statev2}.sqlite into `target` (which must not exist).

    Built in a sibling `.<name>.partial` dir, verified, given a manifest, then renamed into place;
    on any failure or timeout the partial dir is removed. The shared core of `backup_user` and
    `snapshot_database`.
    """
    created = _utc(now)
    userdata = base_dir / "userdata"
    source_main = userdata / MAIN_DB
    if not source_main.is_file():
        raise BackupError(f"{user}: no database at {source_main}",
                          hint=f"on a new host the server makes it on its first start: `t3track adopt VERSION`; "
                               f"else check users[].base_dir for {user} in the config (`t3track config check`)")
    if target.exists():
        raise BackupError(f"{user}: {target} already exists; a backup never overwrites one",
                          hint="move it aside, or use another target")
    deadline = Deadline(None if timeout is None else timeout.total_seconds(), f"{user}: backup of {userdata}")
    make_private_dirs(target.parent)
    partial = target.parent / f".{target.name}{PARTIAL_SUFFIX}"
    _remove_tree(partial)  # the leftover of a killed run aiming at the same target
    started = time.monotonic()
    try:
        partial.mkdir(mode=PRIVATE_DIR)
        files: dict[str, Any] = {}
        for name in DB_FILES:
            source = userdata / name
            if name == MAIN_DB or source.is_file():
                files[name] = _copy_one(source, partial / name, deadline)
        manifest = {"format": MANIFEST_FORMAT, "user": user, "created_at": _iso(created),
                    "t3track_version": __version__, "source_base_dir": str(base_dir), "files": files,
                    "duration_s": round(time.monotonic() - started, 3)}
        atomic_write_text(partial / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        _chown_like([partial, *(partial / n for n in files), partial / MANIFEST], source_main)
        deadline.check()
        os.rename(partial, target)
        fsync_dir(target.parent)
    except BackupError as exc:
        _remove_tree(partial)
        if exc.message.startswith(f"{user}:"):
            raise
        raise type(exc)(f"{user}: {exc.message}", hint=exc.hint) from None
    except (sqlite3.Error, OSError) as exc:
        _remove_tree(partial)
        raise BackupError(f"{user}: backup of {userdata} failed: {exc}",
                          hint="check free space in backup_dir and that the database is readable") from None
    except BaseException:
        _remove_tree(partial)
        raise
    return BackupInfo(user, target, created.replace(microsecond=0), manifest)


def snapshot_database(user_base_dir: Path, dest_dir: Path, *, user: str | None = None,
                      timeout: timedelta | None = None, now: datetime | None = None) -> BackupInfo:
    """Pre-swap snapshot of a stopped server's databases into `dest_dir` (e.g.
    state_dir/snapshots/<run-id>/<user>/), same manifest format as a backup; restore it with
    `t3track.restore.restore_database`."""
    return back_up_base_dir(user_base_dir, dest_dir, user=user or dest_dir.name, timeout=timeout, now=now)


def remove_partials(config: Config, user: str) -> list[Path]:
    """Remove `.<stamp>.partial` dirs a killed backup left behind (callers hold the run lock)."""
    base = user_backup_dir(config, user)
    removed = []
    if base.is_dir():
        for entry in base.iterdir():
            if entry.name.startswith(".") and entry.name.endswith(PARTIAL_SUFFIX) and entry.is_dir():
                _remove_tree(entry)
                removed.append(entry)
    return removed


def _backup_user(config: Config, user: UserConfig, now: datetime | None) -> tuple[BackupInfo, list[Path]]:
    moment = _utc(now)
    base = user_backup_dir(config, user.name)
    # backup_dir/<user> stays root's and 0700 while the backups inside are the user's: the user can
    # never reach them to swap one for a symlink that a root restore would then follow.
    make_private_dirs(base)
    if stat.S_IMODE(base.stat().st_mode) != PRIVATE_DIR:
        os.chmod(base, PRIVATE_DIR)
    remove_partials(config, user.name)
    stamp = moment.strftime(STAMP_FORMAT)
    target, n = base / stamp, 1
    while target.exists() or (base / f".{target.name}{PARTIAL_SUFFIX}").exists():
        n += 1
        target = base / f"{stamp}-{n}"
    info = back_up_base_dir(user.base_dir, target, user=user.name, timeout=config.backup.timeout, now=moment)
    return info, prune(config, user.name, now=moment)


def backup_user(config: Config, user: UserConfig, *, now: datetime | None = None) -> BackupInfo:
    """Back up one user's state under backup_dir/<user>/<stamp>/, then apply retention.
    Raises BackupError (BackupTimeout on a timeout). Does not take the run lock."""
    return _backup_user(config, user, now)[0]


def retained(backups: list[BackupInfo], *, keep: int, keep_daily_days: int, now: datetime) -> set[Path]:
    """The newest `keep`, plus the newest of each UTC day within the last `keep_daily_days` days."""
    ordered = sorted(backups, key=lambda b: b.created_at, reverse=True)
    keep_paths = {b.path for b in ordered[:keep]}
    horizon = now - timedelta(days=keep_daily_days)
    seen_days: set[Any] = set()
    for backup in ordered:
        day = backup.created_at.astimezone(timezone.utc).date()
        if backup.created_at > horizon and day not in seen_days:
            seen_days.add(day)
            keep_paths.add(backup.path)
    return keep_paths


def prune(config: Config, user: str, *, now: datetime | None = None) -> list[Path]:
    """Delete finished backups retention does not keep; returns what was removed."""
    backups = list_backups(config, user)
    keep = retained(backups, keep=config.backup.keep, keep_daily_days=config.backup.keep_daily_days,
                    now=_utc(now))
    removed = []
    for backup in backups:
        if backup.path not in keep:
            shutil.rmtree(backup.path)
            removed.append(backup.path)
    if removed:
        fsync_dir(user_backup_dir(config, user))
    return removed


def backup_all(config: Config, only_user: str | None = None,
               progress: Callable[[str], None] | None = None) -> list[BackupResult]:
    """Back up every user (or one), each on its own: one user's failure does not stop the others.

    Takes the run lock (LockBusy while a run or another backup holds it) and records one history
    line per user.
    """
    from t3track.state import StateStore, operator_name  # state imports nothing of ours; keep the edge thin

    users = [config.user(only_user)] if only_user is not None else list(config.users)
    if not users:
        raise ConfigError("no users in the config; nothing to back up",
                          hint="list each user's name, base_dir and port under `users:`")
    store = StateStore(config.state_dir)
    results: list[BackupResult] = []
    with store.lock():
        for user in users:
            if progress:
                progress(f"{user.name}: backing up {user.base_dir / 'userdata'}")
            started = time.monotonic()
            try:
                info, pruned = _backup_user(config, user, None)
                result = BackupResult(user.name, True, backup=info, pruned=pruned)
            except BackupError as exc:
                result = BackupResult(user.name, False, error=exc.message, hint=exc.hint)
            except OSError as exc:  # retention or the backup dir itself
                result = BackupResult(user.name, False, error=f"{user.name}: {exc}",
                                      hint="check backup_dir's permissions and free space")
            result.duration_s = time.monotonic() - started
            results.append(result)
            store.record("backup", by=operator_name(), user=user.name,
                         outcome="ok" if result.ok else "failed",
                         path=str(result.backup.path) if result.backup else None,
                         error=result.error, pruned=len(result.pruned))
    return results


# ---------------------------------------------------------------- the backup-present gate


def _quick_check_problem(path: Path) -> str | None:
    try:
        conn = _connect_ro(path)
        try:
            rows = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return str(exc)
    return None if rows == ["ok"] else "; ".join(rows[:3])


def check_backup_present(config: Config, user: UserConfig, *, now: datetime | None = None) -> GateCheck:
    """The backup-present gate for one user: fresh, matching its manifest, sound, not behind the live db."""
    moment = _utc(now)
    name = user.name
    backup = newest_backup(config, name)
    if backup is None:
        return GateCheck(False, f"{name}: no backup in {user_backup_dir(config, name)}; {_fix(name)}", None)
    where = f"{name}: backup {backup.path}"
    max_age = config.gates.backup_max_age
    if backup.age_s(moment) > max_age.total_seconds():
        return GateCheck(False, f"{where} is {_age_text(backup.age_s(moment))} old, older than "
                         f"gates.backup_max_age ({_age_text(max_age.total_seconds())}); {_fix(name)}", backup)
    try:
        problem = checksum_problem(backup)
    except BackupMismatch as exc:
        problem = exc.message.split(": ", 1)[-1]
    if problem:
        return GateCheck(False, f"{where} does not match its manifest ({problem}): it was damaged or changed; "
                         f"{_fix(name)}", backup)
    files = backup.files
    live_userdata = user.base_dir / "userdata"
    for db in DB_FILES:
        if db not in files and (live_userdata / db).is_file():
            return GateCheck(False, f"{where} lacks {db}, which the live state has; {_fix(name)}", backup)
    summary = []
    for db in files:
        problem = _quick_check_problem(backup.path / db)
        if problem:
            return GateCheck(False, f"{where}: {db} fails PRAGMA quick_check ({problem}); {_fix(name)}", backup)
        try:
            have = max_migration_id(backup.path / db)
            live = max_migration_id(live_userdata / db) if (live_userdata / db).is_file() else None
        except BackupError as exc:
            return GateCheck(False, f"{name}: {exc.message}; {exc.hint}", backup)
        if have is None:
            return GateCheck(False, f"{where}: {db} has no {MIGRATIONS_TABLE} table, so it is not a T3 state "
                             f"database; check users[].base_dir, then {_fix(name)}", backup)
        if live is not None and have < live:
            return GateCheck(False, f"{where}: {db} has migrations up to {have} but the live database has "
                             f"{live} (migrated since the backup); {_fix(name)}", backup)
        summary.append(f"{db} migrations up to {have}")
    return GateCheck(True, f"{where} is {_age_text(backup.age_s(moment))} old and verified "
                     f"({', '.join(summary)})", backup)


def restore_database(backup: BackupInfo, dest_userdata: Path, *,
                     files: tuple[str, ...] = DB_FILES) -> None:
    """See t3track.restore.restore_database (kept here too so callers find it beside the backups)."""
    from t3track.restore import restore_database as restore

    restore(backup, dest_userdata, files=files)
