"""Work for several users at once, bounded, with the report of a run done one user after another.

The gates and the live checks wait on processes and HTTP, not on Python, so threads are enough
(concurrent.futures). What stays as it was when users went one by one:

- the first failure stops the run: once a user's work fails (or raises), no other user's work
  starts; the work already running sees `stop` set and ends early (a sandbox that is still starting
  is torn down);
- the report is in config order: each user's results in the order that user's work made them, cut
  after the first failure in that order (what a one-by-one run would have shown). Results of later
  users that happened to run beside it are left out of the report (their evidence stays on disk);
- an exception (a host fault, Ctrl-C, a bug) is raised only after every worker has returned, so no
  sandbox outlives the call; the first in config order wins, unless a failure comes before it.

Progress lines from the workers go through `serialised()`, so two lines never mix.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from t3track.results import GateResult

T = TypeVar("T")


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


def run_side_by_side(
    items: Sequence[T],
    work: Callable[[T, threading.Event], list[GateResult]],
    *,
    workers: int,
    name: str = "t3track",
) -> list[GateResult]:
    """`work(item, stop)` for every item on at most `workers` threads; see the module docstring."""
    stop = threading.Event()
    outcomes: dict[int, list[GateResult] | BaseException] = {}

    def task(index: int, item: T) -> None:
        if stop.is_set():
            return  # never started: another user's work failed first
        try:
            results = work(item, stop)
        except BaseException as exc:  # recorded, raised by the caller's thread once every worker is done
            outcomes[index] = exc
            stop.set()
            return
        outcomes[index] = results
        if any(r.failed for r in results):
            stop.set()

    pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(items) or 1)), thread_name_prefix=name)
    futures: list[Future[None]] = []
    try:
        futures = [pool.submit(task, i, item) for i, item in enumerate(items)]
        for future in futures:
            future.result()
    finally:
        stop.set()  # a no-op after a clean run; after Ctrl-C, the running work ends early
        pool.shutdown(wait=True, cancel_futures=True)
    report: list[GateResult] = []
    for index in range(len(items)):
        outcome = outcomes.get(index)
        if outcome is None:
            break  # not started: everything after it in config order was not started either
        if isinstance(outcome, BaseException):
            raise outcome
        for result in outcome:
            report.append(result)
            if result.failed:
                return report
    return report
