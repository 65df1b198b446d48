"""Rebuild a user's databases from a backup or a pre-swap snapshot (the sandbox and the rollback).

Every file is first copied to a temporary name beside its destination while its sha256 is checked
against the manifest; only when all of them match are the live names replaced (stale -wal/-shm/-journal
removed first, because SQLite would replay an old WAL onto the new file), each by one rename.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from t3track.clock import stamp as time_stamp
from t3track.fsutil import PRIVATE_FILE, fsync_dir, make_private_dirs
from t3track.host.manifest import DB_FILES, BackupError, BackupInfo, BackupMismatch, manifest_files

_CHUNK = 1 << 20
SIDE_FILES = ("-wal", "-shm", "-journal")


def _owner_and_mode(dest: Path, userdata: Path) -> tuple[int, int, int]:
    """A restored file keeps the owner and mode of the file it replaces (else: the dir's owner, 0600)."""
    if dest.is_file():
        st = dest.stat()
        return st.st_uid, st.st_gid, st.st_mode & 0o777
    st = userdata.stat()
    return st.st_uid, st.st_gid, PRIVATE_FILE


def _verified_copy(backup: BackupInfo, name: str, entry: dict, dest: Path) -> Path:
    """Copy backup/<name> to a temp file beside dest, checking size and sha256 on the way; fsynced."""
    source = backup.path / name
    uid, gid, mode = _owner_and_mode(dest, dest.parent)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".restore", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, mode)
        if os.geteuid() == 0:
            os.fchown(fd, uid, gid)
        digest, size = hashlib.sha256(), 0
        # O_NOFOLLOW: a restore runs as root and must never copy whatever a planted symlink names
        with os.fdopen(fd, "wb") as out, os.fdopen(os.open(source, os.O_RDONLY | os.O_NOFOLLOW), "rb") as src:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise BackupError(user=backup.user, detail=f"cannot restore {name} from {backup.path}: {exc}",
                          hint=f"check that {dest.parent} is writable and has room") from None
    if size != entry["size"] or digest.hexdigest() != entry["sha256"]:
        tmp.unlink(missing_ok=True)
        raise BackupMismatch(user=backup.user, detail=f"{source} does not match its manifest "
                             f"({size} bytes, sha256 {digest.hexdigest()[:12]}...; manifest: {entry['size']} bytes, "
                             f"{entry['sha256'][:12]}...); refusing to restore a damaged or changed backup",
                             hint="restore from another backup (`ls` the backup dir) and keep this one for inspection")
    return tmp


def _remove_side_files(db: Path) -> None:
    for suffix in SIDE_FILES:
        Path(f"{db}{suffix}").unlink(missing_ok=True)


def restore_database(backup: BackupInfo, dest_userdata: Path, *,
                     files: tuple[str, ...] = DB_FILES) -> None:
    """Rebuild each of `files` in dest_userdata from `backup`, atomically per file.

    Refuses (BackupMismatch, nothing touched) a backup whose manifest or checksum does not match.
    A requested file the backup does not hold but dest_userdata does (say statev2.sqlite, created by
    the version being rolled back) is moved aside as `<name>.before-restore-<stamp>`, with its
    -wal/-shm, so the restored state is the backup's state and nothing is deleted. The servers using
    dest_userdata must be stopped.
    """
    entries = manifest_files(backup)
    for name in files:
        if name not in DB_FILES:
            raise BackupError(f"restore: {name!r} is not a T3 database file name (known: {', '.join(DB_FILES)})")
    wanted = [name for name in files if name in entries]
    if not wanted:
        raise BackupMismatch(user=backup.user, detail=f"backup {backup.path} holds none of {', '.join(files)}")
    make_private_dirs(dest_userdata)
    temps: dict[str, Path] = {}
    try:
        for name in wanted:
            temps[name] = _verified_copy(backup, name, entries[name], dest_userdata / name)
    except BaseException:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
        raise
    stamp = time_stamp()
    try:
        for name in files:
            dest = dest_userdata / name
            if name in temps:
                _remove_side_files(dest)
                os.replace(temps.pop(name), dest)
            elif dest.exists():
                aside = dest_userdata / f"{name}.before-restore-{stamp}"
                for suffix in ("", *SIDE_FILES):
                    if Path(f"{dest}{suffix}").exists():
                        os.rename(f"{dest}{suffix}", f"{aside}{suffix}")
        fsync_dir(dest_userdata)
    except OSError as exc:
        raise BackupError(user=backup.user, detail=f"restoring {dest_userdata} from {backup.path} failed halfway: {exc}",
                          hint=f"the servers must stay stopped; retry the restore, then check {dest_userdata}") from None
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
