"""Is a T3 Code server still running on a base dir? What a swap asks after `stop`, before `start`.

Two signals, as upstream's own server reads them (apps/server/src/serverOwnership.ts): newer builds hold
an exclusive SQLite lock on `userdata/server-owner.sqlite` for their whole life (the OS drops it on any
exit, so a locked file means a live owner); every build writes `userdata/server-runtime.json` with its
pid while it serves. A pid that is alive but started after the file's `startedAt` is another process
that reused the number, not the server. The files belong to the user: nothing here follows a symlink
or opens anything but a regular file, and nothing is ever written or deleted.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from datetime import datetime
from pathlib import Path

OWNER_DB = "server-owner.sqlite"
RUNTIME_FILE = "server-runtime.json"
_REUSE_SLACK_S = 1.0  # upstream: `ps` reports whole seconds


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def lock_held(userdata: Path) -> bool:
    """True while a server holds the exclusive lock on server-owner.sqlite."""
    path = userdata / OWNER_DB
    if not _regular(path):
        return False
    try:
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=0)
    except sqlite3.Error:
        return False
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError as exc:
        return "locked" in str(exc) or "busy" in str(exc)
    except sqlite3.Error:
        return False
    finally:
        conn.close()
    return False


def _process_started_at(pid: int) -> float | None:
    """Unix time the process started (from /proc), or None when it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            return None
        with open("/proc/stat") as handle:
            boot = next(float(line.split()[1]) for line in handle if line.startswith("btime "))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError, StopIteration):
        return None


def runtime_pid(userdata: Path) -> int | None:
    """The pid server-runtime.json names, when that process is alive and is the one that wrote it."""
    path = userdata / RUNTIME_FILE
    if not _regular(path):
        return None
    try:
        with open(path, "rb", opener=lambda p, f: os.open(p, f | os.O_NOFOLLOW | os.O_NONBLOCK)) as handle:
            document = json.loads(handle.read(65536))
            written = os.fstat(handle.fileno()).st_mtime
        pid = document["pid"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:  # 0.0.42 writes no startedAt: the file's mtime is no earlier than the server's start either
        recorded = datetime.fromisoformat(str(document["startedAt"]).replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError, TypeError):
        recorded = written
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1:
        return None
    started = _process_started_at(pid)
    if started is None or started > recorded + _REUSE_SLACK_S:
        return None  # gone, or the pid was reused by a later process
    return pid


def old_server(userdata: Path) -> str | None:
    """What still runs on this base dir (`pid N`, or `the owner of server-owner.sqlite`), or None."""
    pid = runtime_pid(userdata)
    if pid is not None:
        return f"pid {pid}"
    if lock_held(userdata):
        return f"the holder of {OWNER_DB}"
    return None
