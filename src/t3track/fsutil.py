"""Durable, private file operations: atomic replace with fsync, private dirs and files."""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def nearest_existing(path: Path) -> Path:
    """`path`, or the nearest of its parents that exists: where a directory not made yet would go."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_private_dirs(path: Path) -> None:
    """Create `path` and every missing parent with mode 0700 (mkdir(parents=True) would leave the
    parents at the umask). Directories that already exist are left exactly as they are."""
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        directory.mkdir(mode=PRIVATE_DIR, exist_ok=True)
        os.chmod(directory, PRIVATE_DIR)  # mkdir's mode is masked by the umask


def ensure_private_dir(path: Path) -> Path:
    """A directory of t3track's own: created like make_private_dirs, and made 0700 if it exists."""
    make_private_dirs(path)
    if (path.stat().st_mode & 0o777) != PRIVATE_DIR:
        os.chmod(path, PRIVATE_DIR)
    return path


def atomic_write_bytes(path: Path, data: bytes, mode: int = PRIVATE_FILE) -> None:
    """Write to a temporary file beside `path`, fsync it, rename over `path`, fsync the directory.

    A crash at any point leaves either the old file or the new one, never a torn one.
    """
    directory = path.parent
    import tempfile  # not at import: it loads `random`, which read-only commands never need

    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(directory)


def atomic_write_text(path: Path, text: str, mode: int = PRIVATE_FILE) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode)


def append_line(path: Path, line: str) -> None:
    """Append one line with O_APPEND (a single write, so lines never interleave) and fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE)
    try:
        os.write(fd, (line.rstrip("\n") + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
