"""Rebuild a user's databases from a backup or a pre-swap snapshot (the sandbox and the rollback).

Every file is first copied to a temporary name beside its destination while its sha256 is checked
against the manifest; only when all of them match are the live names replaced (stale -wal/-shm/-journal
removed first, because SQLite would replay an old WAL onto the new file), each by one rename.

The destination is a directory its user controls, so root touches it only through a descriptor of
the directory itself, reached without following links (t3track.host.usertree): a `userdata` swapped
for a link to another user's directory is refused, never written through, and a planted
`state.sqlite` link is replaced, never followed. Restored files belong to the directory's owner.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import stat
from pathlib import Path

from t3track.clock import stamp as time_stamp
from t3track.fsutil import PRIVATE_FILE
from t3track.host.manifest import BackupError, BackupInfo, BackupMismatch, manifest_files
from t3track.host.t3db import DB_FILES
from t3track.host.usertree import UserTreeFault, open_dir

_CHUNK = 1 << 20
SIDE_FILES = ("-wal", "-shm", "-journal")


def _owner_and_mode(dir_fd: int, name: str) -> tuple[int, int, int]:
    """A restored file keeps the owner and mode of the file it replaces, when that is a regular file
    with one link that the directory's owner may have (in a root-owned directory: any owner); else it
    gets the directory's owner and 0600. Never what a link names."""
    directory = os.fstat(dir_fd)
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return directory.st_uid, directory.st_gid, PRIVATE_FILE
    owner_ok = directory.st_uid == 0 or st.st_uid == directory.st_uid
    if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and owner_ok:
        return st.st_uid, st.st_gid, st.st_mode & 0o777
    return directory.st_uid, directory.st_gid, PRIVATE_FILE


def _verified_copy(backup: BackupInfo, name: str, entry: dict, dir_fd: int, shown: Path) -> str:
    """Copy backup/<name> to a new temp file in dir_fd, checking size and sha256; fsynced. Its name."""
    source = backup.path / name
    tmp = f".{name}.{secrets.token_hex(6)}.restore"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     PRIVATE_FILE, dir_fd=dir_fd)
    except OSError as exc:
        raise BackupError(user=backup.user, detail=f"cannot restore {name} into {shown}: {exc.strerror}",
                          hint=f"check that {shown} is writable and has room") from None
    try:
        uid, gid, mode = _owner_and_mode(dir_fd, name)
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
        _unlink(dir_fd, tmp)
        raise BackupError(user=backup.user, detail=f"cannot restore {name} from {backup.path}: {exc}",
                          hint=f"check that {shown} is writable and has room") from None
    if size != entry["size"] or digest.hexdigest() != entry["sha256"]:
        _unlink(dir_fd, tmp)
        raise BackupMismatch(user=backup.user, detail=f"{source} does not match its manifest "
                             f"({size} bytes, sha256 {digest.hexdigest()[:12]}...; manifest: {entry['size']} bytes, "
                             f"{entry['sha256'][:12]}...); refusing to restore a damaged or changed backup",
                             hint="restore from another backup (`ls` the backup dir) and keep this one for inspection")
    return tmp


def _unlink(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _open_userdata(dest_userdata: Path, user: str) -> int:
    """dest_userdata as a descriptor; created (0700, owned like its parent) when it is missing."""
    try:
        return open_dir(dest_userdata, user=user)
    except UserTreeFault as exc:
        if not exc.missing:
            raise
    parent = open_dir(dest_userdata.parent, user=user)
    try:
        try:
            os.mkdir(dest_userdata.name, 0o700, dir_fd=parent)
        except FileExistsError:
            pass
        fd = os.open(dest_userdata.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        st = os.fstat(parent)
        if os.geteuid() == 0 and os.fstat(fd).st_uid != st.st_uid:
            os.fchown(fd, st.st_uid, st.st_gid)
        return fd
    finally:
        os.close(parent)


def restore_database(backup: BackupInfo, dest_userdata: Path, *,
                     files: tuple[str, ...] = DB_FILES) -> None:
    """Rebuild each of `files` in dest_userdata from `backup`, atomically per file.

    Refuses (BackupMismatch, nothing touched) a backup whose manifest or checksum does not match.
    A requested file the backup does not hold but dest_userdata does (say statev2.sqlite, created by
    the version being rolled back) is moved aside as `<name>.before-restore-<stamp>`, with its
    -wal/-shm, so the restored state is the backup's state and nothing is deleted. The servers using
    dest_userdata must be stopped. A dest_userdata reached through a link the user controls is
    refused (UserTreeFault), nothing written.
    """
    entries = manifest_files(backup)
    for name in files:
        if name not in DB_FILES:
            raise BackupError(f"restore: {name!r} is not a T3 database file name (known: {', '.join(DB_FILES)})")
    wanted = [name for name in files if name in entries]
    if not wanted:
        raise BackupMismatch(user=backup.user, detail=f"backup {backup.path} holds none of {', '.join(files)}")
    dir_fd = _open_userdata(dest_userdata, backup.user)
    try:
        temps: dict[str, str] = {}
        try:
            for name in wanted:
                temps[name] = _verified_copy(backup, name, entries[name], dir_fd, dest_userdata)
        except BaseException:
            for tmp in temps.values():
                _unlink(dir_fd, tmp)
            raise
        stamp = time_stamp()
        try:
            for name in files:
                if name in temps:
                    for suffix in SIDE_FILES:
                        _unlink(dir_fd, name + suffix)
                    os.replace(temps.pop(name), name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                elif _exists(dir_fd, name):
                    aside = f"{name}.before-restore-{stamp}"
                    for suffix in ("", *SIDE_FILES):
                        if _exists(dir_fd, name + suffix):
                            os.rename(name + suffix, aside + suffix, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            os.fsync(dir_fd)
        except OSError as exc:
            if exc.errno == errno.EISDIR or isinstance(exc, IsADirectoryError):
                detail = f"restoring {dest_userdata} failed: a directory stands where a database file goes ({exc})"
            else:
                detail = f"restoring {dest_userdata} from {backup.path} failed halfway: {exc}"
            raise BackupError(user=backup.user, detail=detail,
                              hint=f"the servers must stay stopped; retry the restore, then check {dest_userdata}") from None
        finally:
            for tmp in temps.values():
                _unlink(dir_fd, tmp)
    finally:
        os.close(dir_fd)
