"""Backups of each user's T3 state: layout, listing, creation, verification and restore.

Layout: backup_dir/<user>/<stamp>/{state.sqlite[, statev2.sqlite], manifest.json}, where <stamp> is
UTC `YYYYMMDDTHHMMSSZ` (sortable). A directory is renamed into place only when complete, so any
directory with a manifest.json is a finished backup.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from t3track.config import Config

MANIFEST = "manifest.json"
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"


@dataclass(frozen=True)
class BackupInfo:
    user: str
    path: Path
    created_at: datetime
    manifest: dict[str, Any]

    def age_s(self, now: datetime) -> float:
        return (now - self.created_at).total_seconds()


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
        manifest_path = entry / MANIFEST
        if entry.name.startswith(".") or not manifest_path.is_file():
            continue
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            created = datetime.fromisoformat(manifest["created_at"].replace("Z", "+00:00"))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        found.append(BackupInfo(user, entry, created, manifest))
    return sorted(found, key=lambda b: b.created_at, reverse=True)


def newest_backup(config: Config, user: str) -> BackupInfo | None:
    backups = list_backups(config, user)
    return backups[0] if backups else None
