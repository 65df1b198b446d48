"""The command line: parse options, call one core function, render the result, pick the exit code.

Nothing else lives here: the core never prints and never exits. `app` registers the commands of
control (freeze, pin, deny...), inspect (status, history, show), moves (run, dry-run, adopt,
revert, drill) and host (backup, probe, config check); a plain `status` runs without typer
(t3track.cli.fast).
"""

from __future__ import annotations

import os
import sys
from typing import Any

# t3track uses no pydantic plugins: skip their discovery (a scan of every installed package's
# metadata on the first model) at each start. Set before anything builds a pydantic model.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

__all__ = ["app", "main"]


def _typer_app() -> Any:
    from t3track.cli import control, host, inspect, moves  # noqa: F401  (each registers its commands)
    from t3track.cli.typer_app import app

    return app


def __getattr__(name: str) -> Any:
    # `from t3track.cli import app`: built on first use, so a plain `status` never imports typer
    if name == "app":
        app = _typer_app()
        globals()["app"] = app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _exit_code(code: str | int | None) -> str | int | None:
    """A command that honoured a stop request exits 130 (interrupted), unless it ended critical (4)."""
    from t3track import stops
    from t3track.errors import ExitCode

    if stops.requested() and code not in (ExitCode.CRITICAL, int(ExitCode.CRITICAL)):
        return int(ExitCode.INTERRUPTED)
    return code


def main() -> None:
    from t3track import stops
    from t3track.cli import fast

    # SIGTERM, SIGINT, SIGHUP: a request to stop at the next safe point (Python would run no `finally`
    # on an unhandled SIGTERM; inside a swap the request waits for the old or new version to serve)
    stops.install()
    try:
        plain = fast.plain_status(sys.argv[1:])
        if plain is not None:
            sys.exit(fast.run_status(*plain))
        _typer_app()()
    except KeyboardInterrupt:
        sys.exit(130)
    except SystemExit as done:
        sys.exit(_exit_code(done.code))
