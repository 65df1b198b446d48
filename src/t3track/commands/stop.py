"""`t3track stop`: ask the running night (or any t3track holding the lock) to stop at its next safe point.

The lock file (state_dir/lock) names its holder's pid. The request is the same SIGTERM that
`systemctl stop t3track.service` sends (see t3track.stops): before a swap's flip everything is put
back as it was, after it the live check finishes and a failure rolls back. It is sent only to a
process that holds the lock now and is t3track, never to whatever pid a stale file names.
"""

from __future__ import annotations

import fcntl
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from t3track.errors import EnvironmentFault
from t3track.state import LOCK_FILE, StateStore


@dataclass(frozen=True)
class StopRequest:
    pid: int | None            # the holder asked to stop; None: nothing held the lock
    command: str = ""          # its command line, for the operator
    stopped: bool | None = None  # after waiting: it let the lock go (None: not waited for)


def holder(store: StateStore) -> int | None:
    """The pid holding the run lock now, or None when nobody holds it (a stale pid in the file is ignored)."""
    try:
        fd = os.open(store.dir / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            if not text.isdigit():
                raise EnvironmentFault(f"{store.dir / LOCK_FILE} is held but names no pid",
                                       hint="`systemctl stop t3track.service` stops the nightly unit") from None
            return int(text)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def command_line(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def is_t3track(argv: list[str]) -> bool:
    """`t3track ...`, `/usr/local/bin/t3track ...` or `python -m t3track ...`."""
    names = [os.path.basename(arg) for arg in argv]
    return "t3track" in names[:2] or any(a == "-m" and b in ("t3track", "t3track.cli") for a, b in zip(argv, argv[1:]))


def request_stop(store: StateStore, *, wait_s: float = 0.0) -> StopRequest:
    pid = holder(store)
    if pid is None:
        return StopRequest(None)
    argv = command_line(pid)
    if not is_t3track(argv):
        raise EnvironmentFault(f"the run lock names pid {pid}, which is not t3track ({' '.join(argv) or 'gone'}); "
                               "nothing was signalled",
                               hint=f"look at it (`ps -o pid,cmd -p {pid}`); `systemctl stop t3track.service` "
                               "stops the nightly unit")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:  # it ended in between: nothing left to stop
        return StopRequest(pid, " ".join(argv), True)
    if wait_s <= 0:
        return StopRequest(pid, " ".join(argv))
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if holder(store) != pid:
            return StopRequest(pid, " ".join(argv), True)
        time.sleep(0.2)
    return StopRequest(pid, " ".join(argv), False)
