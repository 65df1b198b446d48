"""The users' production servers, through the configured service commands (argv lists, never a shell)."""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from t3track.config import Config, UserConfig
from t3track.errors import CriticalError, T3TrackError
from t3track.host import owner
from t3track.host.startlog import host_refusal
from t3track.parallel import serialised, side_by_side
from t3track.runner import run as run_command

Progress = Callable[[str], None]
POLL_S = 0.1
SHIPPED_START = ["systemctl", "start", "t3@{user}.service"]
SYSTEMD_RUNNING = Path("/run/systemd/system")  # sd_booted(3): systemd is PID 1
UNIT_SHOW_TIMEOUT_S = 10.0
LOGS_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class UserMark:
    """A moment in a move for one user: `stop` issued, `start` issued, `verified` live (monotonic time)."""

    at: float
    user: str
    what: str


def downtime(marks: list[UserMark], users: list[str], end: float) -> dict[str, float]:
    """Per user: from each stop of that user's server to its next passing live check (or `end`)."""
    result = {}
    for user in users:
        total, down_since = 0.0, None
        for mark in marks:
            if mark.user != user:
                continue
            if mark.what == "stop" and down_since is None:
                down_since = mark.at
            elif mark.what == "verified" and down_since is not None:
                total += mark.at - down_since
                down_since = None
        if down_since is not None:  # stopped and never checked again: down until the swap ended
            total += end - down_since
        result[user] = total
    return result


def service_argv(template: list[str], user: UserConfig) -> list[str]:
    """{user} {port} {base_dir} filled by plain replacement (no str.format: a config must not reach
    attributes, and a stray brace must not raise mid-swap); config validation refuses other names."""
    return fill(template, {"user": user.name, "port": str(user.port), "base_dir": str(user.base_dir)})


def fill(template: list[str], values: dict[str, str]) -> list[str]:
    """An argv template's {name} placeholders replaced literally (never str.format)."""
    argv = []
    for part in template:
        for key, value in values.items():
            part = part.replace("{" + key + "}", value)
        argv.append(part)
    return argv


def service(config: Config, action: str, user: UserConfig) -> None:
    argv = service_argv(getattr(config.services, action), user)
    try:
        result = run_command(argv, timeout=config.services.timeout.total_seconds())
    except T3TrackError as exc:  # e.g. the service command is not installed
        raise CriticalError(f"{action} of {user.name}'s server failed: {exc.message}",
                            hint=f"check the service command in the config: {' '.join(argv)}") from None
    if not result.ok:
        raise CriticalError(f"{action} of {user.name}'s server failed: {result.describe()}",
                            hint=f"check the service by hand: {' '.join(argv)}")


@dataclass(frozen=True)
class RefusedStart:
    """A user's server that refused to start because of the host's state (a 0.1.x refusal in its output)."""

    user: str
    line: str
    hint: str


def refused_starts(config: Config) -> list[RefusedStart]:
    """Each user of this view whose server's recent output (services.logs) holds a host refusal. Best
    effort: a logs command that fails or is not configured finds nothing."""
    if config.services.logs is None:
        return []
    found = []
    for user in config.users:
        try:
            result = run_command(service_argv(config.services.logs, user), timeout=LOGS_TIMEOUT_S)
        except T3TrackError:
            continue
        refusal = host_refusal(result.stdout + "\n" + result.stderr) if result.ok else None
        if refusal is not None:
            found.append(RefusedStart(user.name, *refusal))
    return found


def each_user(config: Config, action: str, progress: Progress, *, keep_going: bool = False,
              marks: list[UserMark] | None = None, notes: list[str] | None = None,
              then: Callable[[UserConfig], None] | None = None) -> list[str]:
    """Run `action` for every user, side by side (at most config.gates.parallel at once: each waits
    on systemctl and on a process, not on the CPU). A swap stops at the first failure: no user after
    it (in config order) starts its action, and the first failure in config order is raised once
    every action under way has returned. A rollback tries every user (a user left stopped because
    another user's start failed would be a second outage) and returns the problems in config order.

    A `stop` is done only when the old process has exited (a stop command may return before it is
    gone; newer builds hold an ownership lock that makes the next server exit at once): when it had
    to wait, a line goes into `notes`.

    `then(user)` runs right after that user's action has succeeded, in the same worker (the swap
    hands each database to its snapshot workers there, as soon as that user's server is gone).
    What it raises (T3TrackError, OSError) is a failure of that user's like a failed action: no
    later user starts, and it is raised in config order. Not for a rollback (`keep_going`)."""
    if then is not None and keep_going:
        raise ValueError("each_user: `then` is for a swap's steps, which stop at the first failure")
    say = serialised(progress)
    failed = threading.Event()

    def one(user: UserConfig) -> T3TrackError | OSError | None:
        if failed.is_set() and not keep_going:
            return None  # a user before this one failed: the swap is over, the rollback takes it from here
        say(f"{action} {user.name}'s server")
        if marks is not None:
            marks.append(UserMark(time.monotonic(), user.name, action))
        try:
            service(config, action, user)
            if action == "stop":
                waited = wait_until_stopped(config, user, say)
                if waited and notes is not None:
                    notes.append(waited)  # list.append: one at a time
        except CriticalError as exc:
            failed.set()
            return exc
        if then is not None:
            try:
                then(user)
            except (T3TrackError, OSError) as exc:
                failed.set()
                return exc
        return None

    errors = [error for error in side_by_side(one, config.users, config.gates.parallel) if error is not None]
    if errors and not keep_going:
        raise errors[0]
    return [str(error.message if isinstance(error, T3TrackError) else error) for error in errors]


def wait_until_stopped(config: Config, user: UserConfig, progress: Progress) -> str | None:
    """Wait (up to services.timeout) until the user's old server has exited; CriticalError if it never
    does. Returns what it waited for, or None when the server was already gone."""
    userdata = user.base_dir / "userdata"
    holder = owner.old_server(userdata)
    if holder is None:
        return None
    progress(f"{user.name}'s server ({holder}) is still running after stop: waiting for it to exit")
    started = time.monotonic()
    deadline = started + config.services.timeout.total_seconds()
    while time.monotonic() < deadline:
        time.sleep(POLL_S)
        if owner.old_server(userdata) is None:
            return (f"{user.name}: waited {time.monotonic() - started:.1f}s for the old server ({holder}) to exit "
                    f"after the stop command returned, before starting the next one")
    raise CriticalError(f"{user.name}'s server ({holder}) still runs {config.services.timeout.total_seconds():.0f}s "
                        "after the stop command returned; starting another would fail on its ownership lock",
                        hint=f"stop it by hand, then check the stop command: {' '.join(config.services.stop)}")


def unit_layout_warnings(config: Config) -> list[str]:
    """Each user's t3@.service must start the server through root/users/<user>, the link t3track moves
    (per ring, or to `current`): a unit still starting root/current/... or a versions/ directory would
    serve the old version after every move, and each night's live check would roll it back. Asked of
    systemd (`systemctl show`) where the start command is the shipped one and systemd runs; elsewhere
    there is no unit to read."""
    if config.services.start != SHIPPED_START or not SYSTEMD_RUNNING.is_dir() or shutil.which("systemctl") is None:
        return []
    warnings = []
    for user in config.users:
        unit = f"t3@{user.name}.service"
        try:
            shown = run_command(["systemctl", "show", "--property=ExecStart", "--", unit], timeout=UNIT_SHOW_TIMEOUT_S)
        except T3TrackError as exc:
            return [f"cannot ask systemd how {unit} starts: {exc.message}"]
        if not shown.ok:
            warnings.append(f"cannot ask systemd how {unit} starts: {shown.describe()}")
            continue
        found = re.search(r"\bpath=(\S+)", shown.stdout)
        link = config.root / "users" / user.name
        if found is None:
            warnings.append(f"{unit} has no ExecStart=: install systemd/t3@.service (scripts/install-host.sh does)")
        elif not Path(os.path.normpath(found.group(1))).is_relative_to(os.path.normpath(link)):
            warnings.append(f"{unit} starts {found.group(1)}, not through {link}/ (the link t3track moves for "
                            f"{user.name}): every move would leave it on the old version; point ExecStart= at "
                            f"{link / config.executable} (the shipped systemd/t3@.service does) and "
                            "`systemctl daemon-reload`")
    return warnings
