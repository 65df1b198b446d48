"""Work for several users at once, bounded, with the report of a run done one user after another.

The gates and the live checks wait on processes and HTTP, not on Python, so threads are enough
(concurrent.futures). What stays as it was when users went one by one:

- the first failure stops the run: once a user's work fails (or raises), no later user's work (in
  config order) starts, and the later users' work already running sees its `stop` set and ends early
  (a sandbox that is still starting is torn down). Earlier users' work runs on: it may fail too, and
  then its failure is the one reported, as in a one-by-one run;
- the report is in config order: each user's results in the order that user's work made them, cut
  after the first failure in that order (what a one-by-one run would have shown). Results of later
  users that happened to run beside it are left out of the report (their evidence stays on disk);
- an exception (a host fault, Ctrl-C, a bug) is raised only after every worker has returned, so no
  sandbox outlives the call; the first in config order wins, unless a failure comes before it.

Progress lines from the workers go through `t3track.parallel.serialised()`, so two lines never mix.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

from t3track.parallel import outcomes
from t3track.results import GateResult

T = TypeVar("T")


def run_side_by_side(
    items: Sequence[T],
    work: Callable[[T, threading.Event], list[GateResult]],
    *,
    workers: int,
    name: str = "t3track",
) -> list[GateResult]:
    """`work(item, stop)` for every item on at most `workers` threads (t3track.parallel); see the
    module docstring for what stays as in a one-by-one run."""
    stops = [threading.Event() for _ in items]  # stops[i]: an item before i failed
    lock = threading.Lock()

    def failed_at(index: int) -> None:
        with lock:
            for later in stops[index + 1:]:
                later.set()

    def task(indexed: tuple[int, T]) -> list[GateResult] | None:
        index, item = indexed
        if stops[index].is_set():
            return None  # never started: an earlier user's work failed
        try:
            results = work(item, stops[index])
        except BaseException:
            failed_at(index)
            raise
        if any(r.failed for r in results):
            failed_at(index)
        return results

    def stop_all() -> None:
        for stop in stops:
            stop.set()  # after Ctrl-C or a stop signal, the running work ends early

    found = outcomes(task, list(enumerate(items)), workers, name=name, cancel=stop_all)
    report: list[GateResult] = []
    for outcome in found:
        if outcome.raised is not None:
            raise outcome.raised
        if outcome.value is None:
            break  # not started: an earlier user failed (and is reported below)
        for result in outcome.value:
            report.append(result)
            if result.failed:
                return report
    return report
