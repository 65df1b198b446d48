"""The command line: parse options, call one core function, render the result, pick the exit code.

Nothing else lives here: the core never prints and never exits. `app` (t3track.cli.typer_app) holds
the commands of control (freeze, pin, deny...), inspect (status, history, show), moves (run, dry-run,
adopt, revert, drill) and host (backup, probe, config check).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from t3track.cli import control, host, inspect, moves  # noqa: F401  (each registers its commands)
from t3track.cli.typer_app import app

__all__ = ["app", "main"]


def _interrupt(signum: int, _frame: Any) -> None:
    # systemd stops a unit with SIGTERM: unwind like Ctrl-C so every sandbox is removed and every
    # process group we started is ended (Python runs no `finally` on an unhandled SIGTERM)
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    # t3track uses no pydantic plugins: skip their discovery (a scan of every installed package's
    # metadata on the first model) at each start. Set before anything builds a pydantic model.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
