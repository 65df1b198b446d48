"""`t3track stop`: ask the running night (or any t3track holding the lock) to stop at its next safe point.

The kernel names the lock's holder (StateStore.lock_holder reads /proc/locks, never taking the lock,
so asking cannot make a night that starts meanwhile exit 75). The request is the same SIGTERM that
`systemctl stop t3track.service` sends (see t3track.stops): before a swap's flip everything is put
back as it was, after it the live check finishes and a failure rolls back. It is sent only to a
process that holds the lock now and is t3track, never to whatever pid a stale file names.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from t3track.errors import EnvironmentFault
from t3track.state import StateStore


@dataclass(frozen=True)
class StopRequest:
    pid: int | None            # the holder asked to stop; None: nothing held the lock
    command: str = ""          # its command line, for the operator
    stopped: bool | None = None  # after waiting: it let the lock go (None: not waited for)


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
    pid = store.lock_holder()
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
        if store.lock_holder() != pid:
            return StopRequest(pid, " ".join(argv), True)
        time.sleep(0.2)
    return StopRequest(pid, " ".join(argv), False)
