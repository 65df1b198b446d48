"""A backup's manifest and what it promises: the files it holds (size, sha256, migrations), read back
and checked before anything trusts them, and the listing of a user's finished backups. Shared by
making backups, restoring them, the gates and status (which lists backups without importing what
makes them: t3track.host.backup re-exports the listing)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from t3track.clock import as_utc, parse_iso
from t3track.errors import EnvironmentFault
from t3track.host.t3db import DB_FILES
from t3track.results import json_key

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
_CHUNK = 1 << 20
MANIFEST_CAP = 1 << 20  # a manifest is a few hundred bytes; a bigger one is not ours

if TYPE_CHECKING:
    from t3track.config import Config


def fix_hint(user: str) -> str:
    return f"run `t3track backup --user {user}`"


class BackupError(EnvironmentFault):
    """A backup could not be made, read or restored; nothing half-done was left behind.

    `detail` is what happened; the message names the user first when there is one."""

    def __init__(self, detail: str, *, user: str | None = None, hint: str | None = None):
        super().__init__(f"{user}: {detail}" if user else detail, hint=hint)
        self.detail = detail
        self.user = user

    def for_user(self, user: str) -> BackupError:
        """The same error, said of `user`."""
        return type(self)(self.detail, user=user, hint=self.hint)


class BackupTimeout(BackupError):
    """A backup step ran past config.backup.timeout and was interrupted."""


class BackupMismatch(BackupError):
    """A backup does not match its manifest (damaged or changed since it was made): never restored."""


@dataclass(frozen=True)
class BackupInfo:
    user: str
    path: Path
    created_at: datetime
    manifest: dict[str, Any] = json_key(False)
    json_extra = {"files": "raw_files"}

    def age_s(self, now: datetime) -> float:
        return (now - self.created_at).total_seconds()

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        """Database file name -> {source, size, sha256, max_migration_id, ...} (validated)."""
        return manifest_files(self)

    @property
    def raw_files(self) -> Any:
        return self.manifest.get("files", {})


def read_backup(path: Path, user: str) -> BackupInfo:
    """The finished backup (or snapshot) in `path`; BackupMismatch when its manifest is unreadable."""
    try:
        manifest = json.loads((path / MANIFEST).read_bytes()[:MANIFEST_CAP + 1].decode("utf-8"))
        if not isinstance(manifest, dict) or not isinstance(manifest.get("created_at"), str):
            raise TypeError("not a manifest")
        created = parse_iso(manifest["created_at"])
        as_utc(created).astimezone()  # a moment we can compare
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError, OverflowError) as exc:
        raise BackupMismatch(f"{path / MANIFEST} is missing or unreadable ({exc.__class__.__name__})",
                             user=user, hint=f"use another backup, or {fix_hint(user)}") from None
    return BackupInfo(user, path, as_utc(created), manifest)


# ---------------------------------------------------------------- listing a user's backups (status reads them here)


def user_backup_dir(config: Config, user: str) -> Path:
    return config.backup_dir / user


def _newest_first_key(backup: BackupInfo) -> tuple[datetime, int]:
    """Backups made within one second share a stamp: `<stamp>-2`, `<stamp>-3`... are the later ones."""
    _, _, n = backup.path.name.partition("-")
    return backup.created_at, int(n) if n.isdigit() else 1


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
    return sorted(found, key=_newest_first_key, reverse=True)


def newest_backup(config: Config, user: str) -> BackupInfo | None:
    backups = list_backups(config, user)
    return backups[0] if backups else None


def manifest_files(backup: BackupInfo) -> dict[str, dict[str, Any]]:
    """The manifest's file entries, checked for shape, so a changed manifest cannot name other paths."""
    files = backup.manifest.get("files")
    # a host first installed on a V2 build has statev2.sqlite alone: any one database will do
    if not isinstance(files, dict) or not any(name in files for name in DB_FILES):
        raise BackupMismatch(f"backup {backup.path} has a manifest without {' or '.join(DB_FILES)}",
                             user=backup.user, hint=fix_hint(backup.user))
    for name, entry in files.items():
        if name not in DB_FILES or not isinstance(entry, dict) \
                or not isinstance(entry.get("sha256"), str) or not re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]) \
                or not isinstance(entry.get("size"), int) or isinstance(entry.get("size"), bool) \
                or entry["size"] < 0:
            raise BackupMismatch(f"backup {backup.path} has a malformed manifest entry {name!r}",
                                 user=backup.user, hint=fix_hint(backup.user))
    return files


def sha256_file(path: Path, check: Callable[[], None] | None = None) -> str:
    """`check` runs after each chunk (a backup's Deadline.check, which raises once it has passed)."""
    import hashlib  # not at import: it loads OpenSSL, which status never needs

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            if check is not None:
                check()
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
