"""Work for several users at once: the one way t3track runs per-user work side by side.

Everything done per user (a tree read, a service stop or start, a gate, a live check, a status read)
waits on a child process, systemd or HTTP, not on Python: threads are enough. Results come in the
items' order (the config's order of users), and nothing started here outlives the call: an exception is
handed back only once every call has returned.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar, cast

_T = TypeVar("_T")
_R = TypeVar("_R")


@dataclass(frozen=True)
class Outcome(Generic[_R]):
    """What one item's work returned (`raised` None), or what it raised."""

    value: _R | None = None
    raised: BaseException | None = None


def outcomes(work: Callable[[_T], _R], items: Sequence[_T], workers: int, *, name: str = "t3track",
             cancel: Callable[[], None] | None = None) -> list[Outcome[_R]]:
    """`work(item)` for every item on at most `workers` threads: each item's Outcome, in the items'
    order. `cancel` is called when the caller is interrupted while waiting (Ctrl-C, a stop signal),
    before the wait for the work under way: it tells that work to end early."""
    def guarded(item: _T) -> Outcome[_R]:
        try:
            return Outcome(value=work(item))
        except BaseException as exc:  # handed to the caller's thread
            return Outcome(raised=exc)

    if workers <= 1 or len(items) < 2:
        return [guarded(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items)), thread_name_prefix=name) as pool:
        try:
            return list(pool.map(guarded, items))
        except BaseException:
            if cancel is not None:
                cancel()
            raise


def side_by_side(work: Callable[[_T], _R], items: Sequence[_T], workers: int) -> list[_R]:
    """outcomes(), with the first exception in the items' order raised once every call has returned."""
    found = outcomes(work, items, workers)
    for outcome in found:
        if outcome.raised is not None:
            raise outcome.raised
    return [cast(_R, outcome.value) for outcome in found]  # nothing raised: each holds what its work returned


def serialised(progress: Callable[[str], None] | None) -> Callable[[str], None]:
    """`progress` callable from several threads, one whole line at a time."""
    if progress is None:
        return lambda _text: None
    lock = threading.Lock()
    say = progress

    def locked(text: str) -> None:
        with lock:
            say(text)

    return locked
