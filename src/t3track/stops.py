"""Stop requests: SIGTERM (`systemctl stop`, the unit's start timeout), SIGINT (Ctrl-C), SIGHUP (an
operator's ssh dropping) ask t3track to stop at the next safe point, as unattended-upgrades and dpkg do.

Outside a swap nothing live has been touched, so a request unwinds at once (KeyboardInterrupt: every
sandbox and process group is cleaned up on the way out). Inside a swap (`shielded()`) it is only
remembered: the swap looks at it between steps, puts every server back on the old version if it has not
flipped yet, and otherwise finishes the live check and rolls back on failure as always. A second signal
changes nothing. The night then records what happened and exits 130 (interrupted), or 4 if a rollback
failed.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_requested: str | None = None
_shields = 0


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    global _requested
    _requested = _requested or signal.Signals(signum).name
    if _shields == 0:
        raise KeyboardInterrupt(_requested)


def install() -> None:
    """Route the stop signals here (the CLI does this once at start)."""
    for signum in SIGNALS:
        signal.signal(signum, _on_signal)


def requested() -> str | None:
    """The name of the first stop signal received (`SIGTERM`), or None."""
    return _requested


@contextmanager
def shielded() -> Iterator[None]:
    """Within: a stop signal is remembered, never raised; the code inside checks `requested()`."""
    global _shields
    _shields += 1
    try:
        yield
    finally:
        _shields -= 1
