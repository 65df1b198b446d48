"""Backups of each user's T3 state: layout, listing, creation, retention and the backup-present gate.
(The listing lives in t3track.host.manifest, which status imports without this module: re-exported here.)

Layout: backup_dir/<user>/<stamp>/{state.sqlite[, statev2.sqlite], manifest.json}, where <stamp> is
UTC `YYYYMMDDTHHMMSSZ` (sortable). A backup is built in backup_dir/<user>/.<stamp>.partial/ and
renamed into place only when complete, so any directory with a manifest.json is a finished backup and
a dot-directory ending in `.partial` is the leftover of a killed run (removed by the next backup).

The pre-swap snapshot (`snapshot_database`) is the same thing written into a directory the caller
names; `restore_database` (t3track.host.restore) rebuilds a user's databases from either.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from t3track import __version__
from t3track.clock import as_utc, iso, stamp
from t3track.errors import ConfigError
from t3track.fsutil import PRIVATE_DIR, PRIVATE_FILE, atomic_write_text, fsync_dir, make_private_dirs
from t3track.host import usertree
from t3track.host.manifest import (
    MANIFEST,
    MANIFEST_FORMAT,
    BackupError,
    BackupInfo,
    list_backups,
    sha256_file,
    user_backup_dir,
)
from t3track.host.manifest import newest_backup as newest_backup
from t3track.host.sqlite import Deadline, connect_ro, interrupt_after, max_migration_id

if TYPE_CHECKING:
    from t3track.config import Config, UserConfig

PARTIAL_SUFFIX = ".partial"


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


# ---------------------------------------------------------------- making a backup


def _chown_like(paths: list[Path], uid: int, gid: int) -> None:
    """Backups are owned like the tree they copy (only root can give files away); they stay in
    root's 0700 backup_dir/<user>, so the owner still cannot reach them."""
    if os.geteuid() != 0:
        return
    for path in paths:
        os.chown(path, uid, gid, follow_symlinks=False)


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


MAX_DATABASE_BYTES = 64 << 30  # what one copied database may grow to while it is read


def _copy_one(base_dir: Path, name: str, dest: Path, deadline: Deadline, *, user: str) -> dict[str, Any]:
    """A consistent copy of the user's `name` into `dest` (absent), read with the tree owner's rights
    (t3track.host.usertree), then integrity_check, migrations and checksum of the copy."""
    started = time.monotonic()
    source = base_dir / "userdata" / name
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        try:
            usertree.copy_database(base_dir, name, fd, user=user, timeout_s=deadline.remaining(),
                                   max_bytes=MAX_DATABASE_BYTES)
        except usertree.UserTreeFault as exc:
            deadline.check()  # the child ran out of time: say it timed out
            raise BackupError(exc.detail, user=user, hint=exc.hint) from None
        os.fsync(fd)  # nothing of SQLite's syncs what the child sent
    finally:
        os.close(fd)
    # the copy carries the live file's WAL flag: make it a plain database, as VACUUM INTO would
    plain = sqlite3.connect(dest, isolation_level=None)
    try:
        plain.execute("PRAGMA journal_mode=DELETE")
    finally:
        plain.close()
    vacuumed = time.monotonic()
    copy = connect_ro(dest, deadline.busy_timeout())
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
    digest = sha256_file(dest, deadline.check)
    return {"source": str(source), "size": dest.stat().st_size, "sha256": digest,
            "max_migration_id": migrations, "integrity_check": "ok",
            "vacuum_s": round(vacuumed - started, 3), "integrity_check_s": round(checked - vacuumed, 3),
            "sha256_s": round(time.monotonic() - checked, 3)}


def back_up_base_dir(base_dir: Path, target: Path, *, user: str, timeout: timedelta | None,
                     now: datetime | None = None) -> BackupInfo:
    """Back up base_dir/userdata/{state,statev2}.sqlite (whichever exist) into `target` (which must not exist).

    Built in a sibling `.<name>.partial` dir, verified, given a manifest, then renamed into place;
    on any failure or timeout the partial dir is removed. The shared core of `backup_user` and
    `snapshot_database`.
    """
    created = as_utc(now)
    userdata = base_dir / "userdata"
    try:
        tree = usertree.check_tree(base_dir, user=user)  # no link followed, only regular files of its owner's
    except usertree.UserTreeFault as exc:
        raise BackupError(exc.detail, user=user, hint=exc.hint or
                          f"check users[].base_dir for {user} in the config (`t3track config check`)") from None
    if target.exists():
        raise BackupError(f"{target} already exists; a backup never overwrites one", user=user,
                          hint="move it aside, or use another target")
    deadline = Deadline(None if timeout is None else timeout.total_seconds(), f"backup of {userdata}", user=user)
    make_private_dirs(target.parent)
    partial = target.parent / f".{target.name}{PARTIAL_SUFFIX}"
    _remove_tree(partial)  # the leftover of a killed run aiming at the same target
    started = time.monotonic()
    try:
        partial.mkdir(mode=PRIVATE_DIR)
        files: dict[str, Any] = {}
        for name in tree.databases:
            files[name] = _copy_one(base_dir, name, partial / name, deadline, user=user)
        manifest = {"format": MANIFEST_FORMAT, "user": user, "created_at": iso(created),
                    "t3track_version": __version__, "source_base_dir": str(base_dir), "files": files,
                    "duration_s": round(time.monotonic() - started, 3)}
        atomic_write_text(partial / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        _chown_like([partial, *(partial / n for n in files), partial / MANIFEST], tree.uid, tree.gid)
        deadline.check()
        os.rename(partial, target)
        fsync_dir(target.parent)
    except BackupError as exc:
        _remove_tree(partial)
        if exc.user is not None:
            raise
        raise exc.for_user(user) from None
    except (sqlite3.Error, OSError) as exc:
        _remove_tree(partial)
        raise BackupError(f"backup of {userdata} failed: {exc}", user=user,
                          hint="check free space in backup_dir and that the database is readable") from None
    except BaseException:
        _remove_tree(partial)
        raise
    return BackupInfo(user, target, created.replace(microsecond=0), manifest)


def snapshot_database(user_base_dir: Path, dest_dir: Path, *, user: str | None = None,
                      timeout: timedelta | None = None, now: datetime | None = None) -> BackupInfo:
    """Pre-swap snapshot of a stopped server's databases into `dest_dir` (e.g.
    state_dir/snapshots/<run-id>/<user>/), same manifest format as a backup; restore it with
    `t3track.host.restore.restore_database`."""
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
    moment = as_utc(now)
    base = user_backup_dir(config, user.name)
    # backup_dir/<user> stays root's and 0700 while the backups inside are the user's: the user can
    # never reach them to swap one for a symlink that a root restore would then follow.
    make_private_dirs(base)
    if stat.S_IMODE(base.stat().st_mode) != PRIVATE_DIR:
        os.chmod(base, PRIVATE_DIR)
    remove_partials(config, user.name)
    name = stamp(moment)
    target, n = base / name, 1
    while target.exists() or (base / f".{target.name}{PARTIAL_SUFFIX}").exists():
        n += 1
        target = base / f"{name}-{n}"
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
        day = backup.created_at.astimezone(UTC).date()
        if backup.created_at > horizon and day not in seen_days:
            seen_days.add(day)
            keep_paths.add(backup.path)
    return keep_paths


def prune(config: Config, user: str, *, now: datetime | None = None) -> list[Path]:
    """Delete finished backups retention does not keep; returns what was removed."""
    backups = list_backups(config, user)
    keep = retained(backups, keep=config.backup.keep, keep_daily_days=config.backup.keep_daily_days,
                    now=as_utc(now))
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




