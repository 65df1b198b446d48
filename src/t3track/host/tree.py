"""The install tree: `root/versions/<version>/` side by side, one `current` link per ring, and one link
per user that the user's server starts through. Every question about where a version lives or what a
link names is here.

    root/versions/<v>/          installs, side by side
    root/current -> versions/<v>           the first ring's link (the only one without `rings`)
    root/rings/<ring> -> ../versions/<v>   each later ring's link
    root/users/<user> -> ../current | ../rings/<ring>   what t3@<user>.service starts through

A swap flips one ring's link, so it moves exactly that ring's users. Everything here is root's:
no user can write under root, so these links are read with plain readlink.
"""

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


def ring_link(config: Config, ring: str | None) -> Path:
    """The `current` link of a ring: root/current for the first ring (or the whole host)."""
    if ring is None or ring == config.first_ring:
        return config.root / "current"
    return config.root / "rings" / ring


def current_link(config: Config) -> Path:
    """The link a swap in this view flips (see Config.ring_view): its ring's."""
    return ring_link(config, config.ring)


def user_link(config: Config, user: str) -> Path:
    return config.root / "users" / user


def _link_text(config: Config, ring: str) -> Path:
    """What a user link in `ring` says, relative to root/users."""
    return Path("..") / ring_link(config, ring).relative_to(config.root)


def linked_version(config: Config, link: Path) -> str | None:
    """The version a link names, through at most two links (user -> ring -> versions/<v>)."""
    for _ in range(3):
        if not link.is_symlink():
            return None
        target = Path(os.path.normpath(link.parent / os.readlink(link)))
        if target.parent == Path(os.path.normpath(versions_dir(config))):
            return target.name if versions.is_valid(target.name) else None
        link = target
    return None


def user_version(config: Config, user: str) -> str | None:
    """The version user's server starts (root/users/<user>, through its ring's link)."""
    return linked_version(config, user_link(config, user))


def _replace_link(link: Path, text: Path) -> None:
    """Point `link` at `text` atomically: a new symlink, then rename over the old."""
    link.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    os.symlink(text, tmp)
    os.replace(tmp, link)
    fsync_dir(link.parent)


def ensure_layout(config: Config) -> list[str]:
    """Bring a host to one link per user (and per later ring), by itself and idempotently: a host on
    today's single `root/current` gains `root/users/<user> -> ../current`, and each later ring's link
    starts where `root/current` is. A link that changes no user's version is made or re-pointed here
    (a user moved to a ring on the same version). A user moved to a ring on another version is held
    on its version (`users/<user> -> ../versions/<v>`) and moves with its new ring's next swap, with
    its server stopped and through that ring's gates. Returns what it made."""
    made: list[str] = []
    current = config.root / "current"
    if not current.is_symlink():
        return made  # a new host: adopt makes the layout
    for ring in config.ring_names()[1:]:
        link = ring_link(config, ring)
        if not link.is_symlink():
            version = linked_version(config, current)
            if version is None:
                continue
            _replace_link(link, Path("..") / "versions" / version)
            made.append(f"{link.relative_to(config.root)} -> versions/{version}")
    for user in config.users:
        link, ring = user_link(config, user.name), config.ring_of(user.name)
        wanted = _link_text(config, ring)
        ring_version = linked_version(config, ring_link(config, ring))
        mine = user_version(config, user.name) if link.is_symlink() else None
        if ring_version is None or (link.is_symlink() and Path(os.readlink(link)) == wanted):
            continue  # in place, or its ring's link is not there to name (never a dangling user link)
        if not link.is_symlink() or mine == ring_version:
            text = wanted  # missing, or another ring's link on the same version: no version changes
        elif mine is not None and Path(os.readlink(link)).parts[:2] != ("..", "versions"):
            # moved to a ring on another version: held on the version it runs (so its old ring's swaps
            # no longer move it) until its new ring's next swap, which stops it first, re-links it
            text = Path("..") / "versions" / mine
        else:
            continue  # already held, or on no version this tree knows: left for the ring's swap
        _replace_link(link, text)
        made.append(f"{link.relative_to(config.root)} -> {text}")
    return made


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
    """Version names any ring's or user's link names: never pruned."""
    links = [ring_link(config, ring) for ring in config.ring_names()]
    rings_dir = config.root / "rings"
    if rings_dir.is_dir():  # a ring the config no longer names still serves someone until moved
        links += [p for p in rings_dir.iterdir() if p.is_symlink()]
    users_dir = config.root / "users"
    if users_dir.is_dir():
        links += [p for p in users_dir.iterdir() if p.is_symlink()]
    return {v for v in (linked_version(config, link) for link in links) if v}


def flip_current(config: Config, version: str) -> None:
    """Point this view's ring link at versions/<version> atomically (a new symlink, then rename over
    the old), and the view's users' links at the ring link where they are not yet (a new host, or a
    user the config moved to this ring): their servers are stopped while this runs."""
    if not versions.is_valid(version) or "/" in version:
        raise CriticalError(f"refusing to point current at {version[:80]!r}: not a version")
    target = prefix_of(config, version)
    if not target.is_dir():
        raise CriticalError(f"cannot point current at {version}: {target} is not installed")
    # the whole host's view on a host with rings (adopt) moves every ring at once
    moving = [config.ring] if config.ring is not None or not config.ringed else config.ring_names()
    for ring in moving:
        link = ring_link(config, ring)
        _replace_link(link, Path(os.path.relpath(target, link.parent)))
    for user in config.users:
        mine = user_link(config, user.name)
        wanted = _link_text(config, config.ring or config.ring_of(user.name))
        if not mine.is_symlink() or Path(os.readlink(mine)) != wanted:
            _replace_link(mine, wanted)
