"""Exit codes and the typed errors the core raises; the CLI maps them to exits in one place."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0            # swapped, or nothing to do
    REFUSED = 1       # a gate failed, or live check failed and rollback succeeded
    USAGE = 2         # usage or config error; nothing changed
    ENVIRONMENT = 3   # registry unreachable, npm failed, disk full; nothing changed
    CRITICAL = 4      # rollback failed or state inconsistent; tracker froze itself
    LOCKED = 75       # another t3track run holds the lock
    INTERRUPTED = 130  # stopped by a signal at a safe point: nothing half-done (see t3track.stops)


EXIT_CODE_HELP = {
    ExitCode.OK: "done: swapped, or nothing to do (frozen, pinned and current, no newer candidate)",
    ExitCode.REFUSED: "refused: a gate failed, or the live check failed and the rollback succeeded",
    ExitCode.USAGE: "usage or config error; nothing changed",
    ExitCode.ENVIRONMENT: "environment error: registry unreachable, npm failed, disk full; nothing changed",
    ExitCode.CRITICAL: "critical: a rollback failed or state is inconsistent; an operator must act",
    ExitCode.LOCKED: "another t3track run holds the lock",
    ExitCode.INTERRUPTED: "interrupted (SIGTERM, SIGINT, SIGHUP) at a safe point: before a swap's flip nothing "
                          "changed; after it the swap was checked live (and rolled back on failure) first",
}


class T3TrackError(Exception):
    """Base of every error the core raises on purpose. `hint` says what the operator can do next."""

    exit_code: ExitCode = ExitCode.ENVIRONMENT

    def __init__(self, message: str, *, hint: str | None = None, problems: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.problems = problems or []
        self.details: dict[str, object] = {}  # extra fields for the --json error document


class UsageError(T3TrackError):
    exit_code = ExitCode.USAGE


class ConfigError(UsageError):
    pass


class EnvironmentFault(T3TrackError):
    """Registry unreachable, npm failed, disk full: nothing changed, try again later."""

    exit_code = ExitCode.ENVIRONMENT


class Interrupted(EnvironmentFault):
    """A stop signal arrived before anything live was touched: nothing changed (exit 130)."""

    exit_code = ExitCode.INTERRUPTED


class StateError(T3TrackError):
    """state.json is unreadable or inconsistent: an operator must look."""

    exit_code = ExitCode.CRITICAL


class CriticalError(T3TrackError):
    exit_code = ExitCode.CRITICAL


class LockBusy(T3TrackError):
    exit_code = ExitCode.LOCKED

    def __init__(self, message: str, *, holder_pid: int | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.holder_pid = holder_pid
        self.details["holder_pid"] = holder_pid
