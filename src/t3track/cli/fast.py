"""`t3track status` without typer, when its command line is plain.

status is what an operator types first and what a monitoring probe runs every minute; typer's
import and the build of all the commands' click objects are about half of its start. So `main`
reads the command line here first: `[--config F | -c F | --config=F] [--json] status [--json]`, in
any number and order typer itself would take, runs the same view (t3track.cli.status_view) with the
same Ctx and the same exit codes (t3track.cli.context). Anything else (help, another command, an
option this does not know, a `--`) goes to typer, untouched. tests/test_cli_fast.py holds both
paths to the same output and exit code.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

CONFIG_OPTIONS = ("--config", "-c")


def plain_status(argv: Sequence[str]) -> tuple[Path | None, bool] | None:
    """(config file, as JSON) when argv is a plain `status`; else None (typer decides)."""
    config: Path | None = None
    as_json = False
    status = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--json":
            as_json = True
        elif status:
            return None  # after the command only its own --json
        elif arg in CONFIG_OPTIONS:
            if i + 1 >= len(argv) or not argv[i + 1]:
                return None
            config = Path(argv[i + 1])
            i += 1
        elif arg.startswith("--config=") and len(arg) > len("--config="):
            config = Path(arg[len("--config="):])
        elif arg == "status":
            status = True
        else:
            return None
        i += 1
    return (config, as_json) if status else None


def run_status(config: Path | None, as_json: bool) -> int:
    from t3track.cli.context import Ctx, guarded
    from t3track.cli.status_view import show_status

    ctx = Ctx(config, as_json)
    code, _ = guarded(ctx.out, lambda: show_status(ctx))
    return code
