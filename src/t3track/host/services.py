"""The users' production servers, through the configured service commands (argv lists, never a shell)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from t3track.config import Config, UserConfig
from t3track.errors import CriticalError, T3TrackError
from t3track.runner import run as run_command

Progress = Callable[[str], None]


@dataclass(frozen=True)
class UserMark:
    """A moment in a move for one user: `stop` issued, `start` issued, `verified` live (monotonic time)."""

    at: float
    user: str
    what: str


def service_argv(template: list[str], user: UserConfig) -> list[str]:
    """{user} {port} {base_dir} filled by plain replacement (no str.format: a config must not reach
    attributes, and a stray brace must not raise mid-swap); config validation refuses other names."""
    values = {"user": user.name, "port": str(user.port), "base_dir": str(user.base_dir)}
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


def each_user(config: Config, action: str, progress: Progress, *, keep_going: bool = False,
              marks: list[UserMark] | None = None) -> list[str]:
    """Run `action` for every user. A swap stops at the first failure; a rollback tries every user
    (a user left stopped because another user's start failed would be a second outage)."""
    problems = []
    for user in config.users:
        progress(f"{action} {user.name}'s server")
        if marks is not None:
            marks.append(UserMark(time.monotonic(), user.name, action))
        try:
            service(config, action, user)
        except CriticalError as exc:
            if not keep_going:
                raise
            problems.append(exc.message)
    return problems
