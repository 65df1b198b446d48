"""The Typer app; `command` turns a command's outcome into its exit code (through
t3track.cli.context, the one mapping of errors to exit codes, which the plain `status` shares).

Each command module (control, inspect, moves, host) parses options, calls one function of the core,
renders its result and returns an exit code; `command` raises `typer.Exit` once. Heavy modules
(pydantic, httpx, rich) are imported inside the commands that use them, so `--help` starts fast.
The modules that define commands (this one and control, host, inspect, moves) do without
`from __future__ import annotations`: typer would eval every option's annotation string (~400 of
them) at each start, `--help` and `status` included.
"""

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer

from t3track import __version__
from t3track.cli.context import Ctx, guarded
from t3track.cli.render import Out
from t3track.errors import EXIT_CODE_HELP, T3TrackError

_EXIT_TABLE = "\n".join(f"  {int(code):>3}  {text}" for code, text in EXIT_CODE_HELP.items())

app = typer.Typer(
    name="t3track",
    help="Keep a self-hosted T3 Code host on the nightly channel, gated, with automatic rollback.\n\n"
    "Every night `t3track run` resolves the nightly from the npm registry, installs it beside the live "
    "version, rehearses it on a copy of each user's state (sandbox serve + the real pairing handshake), "
    "swaps only when every gate passes, checks every live server and rolls back by itself.\n\n"
    f"Exit codes:\n\n\b\n{_EXIT_TABLE}",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
    # a traceback's local variables could hold a credential or a cookie: never print them
    pretty_exceptions_show_locals=False,
)
config_app = typer.Typer(help="Check the config and the host.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(config_app, name="config")

JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON document on stdout")]
ReasonOpt = Annotated[str, typer.Option("--reason", help="why: recorded in history and shown in status")]
ByOpt = Annotated[Optional[str], typer.Option("--by", help="who (default: $SUDO_USER or the login name)")]
RingOpt = Annotated[Optional[str], typer.Option("--ring", help="only this ring (config `rings`), e.g. canary")]


def ring_of(ctx: typer.Context, ring: str | None) -> str | None:
    """A --ring the config names (exit 2, listing the rings, if not; or saying the host has none)."""
    if ring is not None:
        ctx.obj.config().require_ring(ring)
    return ring


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"t3track {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    ctx: typer.Context,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="config file (default: $T3TRACK_CONFIG, then /etc/t3track/config.yaml)")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print one JSON document on stdout")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="print the version")] = False,
) -> None:
    ctx.obj = Ctx(config, json_out)


def _refresh_metrics(ctx: typer.Context) -> None:
    """After an operator action that changes what the metrics report (runs refresh them themselves)."""
    from t3track import aftermath

    try:
        config = ctx.obj.config()
        problem = aftermath.after_action(config, ctx.obj.store(config))
    except T3TrackError:
        return  # the action itself already reported what is wrong with the config or state
    if problem:
        ctx.obj.out.warning(problem)


F = TypeVar("F", bound=Callable[..., Optional[int]])


def command(*, refreshes_metrics: bool = False) -> Callable[[F], F]:
    """Run a command: map typed core errors, interrupts and bugs to their exit code, in one place.

    The command returns its exit code (None is 0); this raises typer.Exit with it."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(ctx: typer.Context, *args: Any, **kwargs: Any) -> None:
            out: Out = ctx.obj.out
            if kwargs.get("json_flag"):
                out.as_json = True
            code, errored = guarded(out, lambda: fn(ctx, *args, **kwargs), passthrough=(typer.Exit, typer.Abort))
            if refreshes_metrics and not errored:  # nothing changed when it raised: nothing to refresh
                _refresh_metrics(ctx)  # also after a backup that failed for some users
            raise typer.Exit(code)

        return wrapper  # type: ignore[return-value]

    return decorate
