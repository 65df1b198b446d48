"""The command line: parse options, call one core function, render the result, pick the exit code.

Nothing else lives here: the core never prints and never exits. `app` (t3track.cli.typer_app) holds
the commands of control (freeze, pin, deny...), inspect (status, history, show), moves (run, dry-run,
adopt, revert, drill) and host (backup, probe, config check).
"""

from __future__ import annotations

import os
import sys

from t3track import stops
from t3track.cli import control, host, inspect, moves  # noqa: F401  (each registers its commands)
from t3track.cli.render import ensure_std_descriptors, settle_streams
from t3track.cli.typer_app import app
from t3track.errors import ExitCode

__all__ = ["app", "main"]


def _exit_code(code: str | int | None) -> str | int | None:
    """A command that honoured a stop request exits 130 (interrupted), unless it ended critical (4)."""
    if stops.requested() and code not in (ExitCode.CRITICAL, int(ExitCode.CRITICAL)):
        return int(ExitCode.INTERRUPTED)
    return code


def main() -> None:
    # t3track uses no pydantic plugins: skip their discovery (a scan of every installed package's
    # metadata on the first model) at each start. Set before anything builds a pydantic model.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    # SIGTERM, SIGINT, SIGHUP: a request to stop at the next safe point (Python would run no `finally`
    # on an unhandled SIGTERM; inside a swap the request waits until the old or new version serves)
    stops.install()
    ensure_std_descriptors()
    try:
        app()
    except KeyboardInterrupt:
        settle_streams()
        sys.exit(int(ExitCode.INTERRUPTED))
    except SystemExit as done:
        settle_streams()  # a closed pipe or a full disk under stdout never changes the exit code
        sys.exit(_exit_code(done.code))
