"""The install tree: `root/versions/<version>/` side by side, and `root/current`, the symlink every
server starts through. Every question about where a version lives or what `current` names is here."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from t3track import versions
from t3track.errors import CriticalError
from t3track.fsutil import fsync_dir

if TYPE_CHECKING:
    from t3track.config import Config

PARTIAL_SUFFIX = ".partial"
REMOVING_SUFFIX = ".removing"


def versions_dir(config: Config) -> Path:
    return config.root / "versions"


def current_link(config: Config) -> Path:
    return config.root / "current"


def prefix_of(config: Config, version: str) -> Path:
    return versions_dir(config) / version


def executable_of(config: Config, version: str) -> Path:
    return config.executable_in(prefix_of(config, version))


def current_executable(config: Config) -> Path:
    """The executable through `current`, as the servers start it."""
    return config.executable_in(current_link(config))


def current_target(config: Config) -> str | None:
    """What the `current` symlink names, as written (None when it is not a symlink)."""
    link = current_link(config)
    return os.readlink(link) if link.is_symlink() else None


def current_version(config: Config) -> str | None:
    """The version `root/current` points at, read from the link itself."""
    target = current_target(config)
    return Path(target).name if target is not None else None


def installed_versions(config: Config) -> list[str]:
    """Complete installs under root/versions (names that are versions), oldest first."""
    try:
        names = [p.name for p in versions_dir(config).iterdir() if p.is_dir() and not p.is_symlink()]
    except FileNotFoundError:
        return []
    return sorted((n for n in names if versions.is_valid(n)), key=versions.sort_key)


def live_targets(config: Config) -> set[str]:
    """Version names any `current` link names: never pruned."""
    version = current_version(config)
    return {version} if version else set()


def flip_current(config: Config, version: str) -> None:
    """Point root/current at versions/<version> atomically: a new symlink, then rename over the old."""
    if not versions.is_valid(version) or "/" in version:
        raise CriticalError(f"refusing to point current at {version[:80]!r}: not a version")
    target = prefix_of(config, version)
    if not target.is_dir():
        raise CriticalError(f"cannot point current at {version}: {target} is not installed")
    link = current_link(config)
    tmp = config.root / f".current.{os.getpid()}.tmp"
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    os.symlink(Path("versions") / version, tmp)
    os.replace(tmp, link)
    fsync_dir(config.root)
