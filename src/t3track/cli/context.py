"""What every command runs with, and the one place that maps outcomes and errors to exit codes.

No typer here: `t3track status`, the command an operator or a monitoring probe runs most, is
dispatched without it when its command line is plain (t3track.cli.fast); the typer app
(t3track.cli.typer_app) uses the same Ctx and the same mapping for every command.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from t3track.cli.render import Out
from t3track.errors import ExitCode, T3TrackError

if TYPE_CHECKING:
    from t3track.config import Config
    from t3track.state import StateStore


class Ctx:
    """What every command gets (through typer's context): the config file, the output, the store."""

    def __init__(self, config_file: Path | None, as_json: bool):
        self.config_file = config_file
        self.out = Out(as_json)

    def config(self) -> Config:
        from t3track.config import load_config

        return load_config(self.config_file)

    def store(self, config: Config | None = None) -> StateStore:
        from t3track.state import StateStore

        return StateStore((config or self.config()).state_dir)


def fail(out: Out, exc: T3TrackError) -> int:
    if out.as_json:
        doc: dict[str, Any] = {"error": exc.message, "exit_code": int(exc.exit_code)}
        if exc.problems:
            doc["problems"] = exc.problems
        if exc.hint:
            doc["hint"] = exc.hint
        doc.update(exc.details)
        out.json(doc)
    out.error(exc.message)
    for problem in exc.problems:
        out.hint(f"- {problem}")
    if exc.hint:
        out.hint(f"next: {exc.hint}")
    return int(exc.exit_code)


def guarded(out: Out, run: Callable[[], int | None], passthrough: tuple[type[BaseException], ...] = ()) -> tuple[int, bool]:
    """Run a command: (its exit code, whether it raised). Typed core errors, interrupts and bugs
    become their exit code here, and only here; `passthrough` exceptions (typer's own) go on."""
    try:
        return run() or 0, False
    except T3TrackError as exc:
        return fail(out, exc), True
    except KeyboardInterrupt:
        out.error("interrupted; sandboxes and their servers were cleaned up")
        out.hint("next: run `t3track status`; if a swap was under way, the next `t3track run` "
                 "finishes or rolls it back")
        return 130, True
    except passthrough:
        raise
    except Exception as exc:  # a bug: say so plainly, redacted, and exit as critical (an operator must look)
        import traceback

        from t3track.redact import redact

        out.info(redact("".join(traceback.format_exception(exc))))
        out.error(f"internal error: {exc.__class__.__name__}: {redact(str(exc))}")
        out.hint("next: run `t3track status`; an interrupted swap is recovered by the next "
                 "`t3track run`; please report this traceback")
        return int(ExitCode.CRITICAL), True
