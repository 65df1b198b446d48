"""Is a user busy? Before a swap stops a user's server, the user's database is asked (as its owner,
read-only) for work a restart would interrupt: an agent turn running, an approval or a question
pending (t3code-contract.md, "Is a user busy?"). The rows are trusted only while that user's server
answers on its port: after a crash they keep saying `running`.

One wait for every busy user together, polling, bounded by config.swap.busy_wait; each poll is bounded
too (the environment request, the owner's reader), so the lock is never held longer than that.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from t3track.config import Config, UserConfig
from t3track.host import serving, usertree
from t3track.parallel import serialised, side_by_side

Progress = Callable[[str], None]
ALIVE_TIMEOUT_S = 2.0     # one GET of /.well-known/t3/environment on loopback
READ_TIMEOUT_S = 10.0     # the owner's reader: a database locked longer than this is not waited on
MAX_POLL_S = 5.0
MIN_POLL_S = 0.2


@dataclass(frozen=True)
class BusyUser:
    """A user whose server would interrupt agent work if stopped now."""

    user: str
    threads: tuple[str, ...]     # thread ids
    what: tuple[str, ...]        # what is going on, e.g. "turn running", one per kind found

    def describe(self) -> str:
        return f"{self.user} ({len(self.threads)} thread(s): {', '.join(self.what)})"


@dataclass
class BusyCheck:
    """What the wait ended with: the users still busy (held), how long it waited, what it could not tell."""

    held: list[BusyUser] = field(default_factory=list)
    waited_s: float = 0.0
    notes: list[str] = field(default_factory=list)


def poll_interval(wait_s: float) -> float:
    return min(MAX_POLL_S, max(MIN_POLL_S, wait_s / 20))


def busy_user(user: UserConfig, notes: list[str]) -> BusyUser | None:
    """`user` when their live server answers and their database shows agent work; None otherwise.
    What cannot be read is noted, not guessed: a tree t3track will not read is the preflight's to refuse."""
    if serving.server_version(f"http://127.0.0.1:{user.port}", timeout=ALIVE_TIMEOUT_S) is None:
        return None  # not serving: nothing to interrupt, and its rows may be a crash's leftovers
    try:
        work = usertree.agent_work(user.base_dir, user=user.name, timeout_s=READ_TIMEOUT_S)
    except usertree.UserTreeFault as exc:
        notes.append(f"{user.name}: could not tell whether an agent is working ({exc.detail}); not held")
        return None
    for error in work.errors:
        notes.append(f"{user.name}: {work.database} could not answer one busy query ({error})")
    if not work.threads:
        return None
    threads = tuple(dict.fromkeys(thread for thread, _ in work.threads))
    what = tuple(dict.fromkeys(kind for _, kind in work.threads))
    return BusyUser(user.name, threads, what)


def wait_until_idle(config: Config, progress: Progress, *, wait: bool = True) -> BusyCheck:
    """Ask every user of this view; while any is busy, ask again every few seconds, up to
    config.swap.busy_wait in all. Every user is asked on every round (one idle a moment ago may have
    started a turn). Returns the users still busy at the end: the ones to hold. `wait=False`
    (--ignore-busy): one round, so the report can say whose work the swap cut."""
    say = serialised(progress)
    check = BusyCheck()
    wait_s = config.swap.busy_wait.total_seconds() if wait else 0.0
    started = time.monotonic()
    deadline = started + wait_s

    def ask() -> list[BusyUser]:
        notes: list[str] = []
        found = [b for b in side_by_side(lambda u: busy_user(u, notes), config.users, config.gates.parallel) if b]
        check.notes[:] = list(dict.fromkeys(notes))
        return found

    busy = ask()
    if busy and not wait:
        check.held = busy
        return check
    if busy:
        say(f"agent work in progress for {', '.join(b.describe() for b in busy)}: waiting up to "
            f"{wait_s:.0f}s for it to end before any server stops")
    while busy and time.monotonic() < deadline:
        time.sleep(min(poll_interval(wait_s), max(0.0, deadline - time.monotonic())))
        busy = ask()
    check.held = busy
    check.waited_s = time.monotonic() - started
    if check.waited_s > MIN_POLL_S and not busy:
        say(f"every agent is idle after {check.waited_s:.0f}s")
    return check
