"""The Typer app, what every command runs with (`Ctx`), and the one place that maps outcomes and
errors to exit codes (`command`, around every command).

Each command module (control, inspect, moves, host) parses options, calls one function of the core,
renders its result and returns an exit code; `command` raises `typer.Exit` once. Heavy modules
(pydantic, httpx, rich) are imported inside the commands that use them, so `--help` starts fast.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional, TypeVar

import typer

from t3track import __version__
from t3track.cli.render import Out, emit
from t3track.errors import EXIT_CODE_HELP, ExitCode, LockBusy, T3TrackError, UsageError

if TYPE_CHECKING:
    from t3track.config import Config
    from t3track.state import StateStore

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


class Ctx:
    """What every command gets (through typer's context): the config file, the output, the store."""

    def __init__(self, config_file: Path | None, as_json: bool):
        self.config_file = config_file
        self.out = Out(as_json)
        self._config: Config | None = None

    def config(self) -> Config:
        """The config, read and validated once per command (the root check and the command share it)."""
        from t3track.config import load_config

        if self._config is None:
            self._config = load_config(self.config_file)
        return self._config

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


# what a command that finds the lock held (exit 75) tells the operator: both ways to end a night early
_LOCK_HINT = ("a night (or another command) is running; wait for it (up to ~45 minutes with the timer's delay), "
              "or ask it to stop at its next safe point: `t3track stop` (or `systemctl stop t3track.service`), "
              "then try again")

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
        from t3track import build_commit

        emit("stdout", f"t3track {__version__} ({build_commit()})\n")
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


def _not_root() -> bool:
    return os.geteuid() != 0


def _must_be_root(ctx: typer.Context, what: str | None = None) -> UsageError:
    """One line, exit 2, as apt's "are you root?": the rest of the message would only be noise."""
    names = []
    here: Any = ctx
    while here.parent is not None:  # `t3track config check`, however it was started (python -m t3track)
        names.append(here.info_name)
        here = here.parent
    command = " ".join(["t3track", *reversed(names)])
    return UsageError(f"{command} must run as root" + (f" ({what})" if what else "")
                      + f"; nothing was changed (try: sudo {command})")


def _require_root(ctx: typer.Context) -> None:
    """Before a command that changes the host touches anything: root, or a state_dir this user may
    write (an emulated host, the demo, a development checkout, all owned by the user who runs them)."""
    if not _not_root():
        return
    from t3track.fsutil import nearest_existing

    if not os.access(nearest_existing(ctx.obj.config().state_dir), os.W_OK | os.X_OK):
        raise _must_be_root(ctx)


def _denied_reading(exc: BaseException) -> bool:
    """A permission error, raw or behind a typed error (state.json unreadable): a non-root user's."""
    return isinstance(exc, PermissionError) or isinstance(exc.__context__, PermissionError)


def command(*, refreshes_metrics: bool = False, needs_root: bool = False) -> Callable[[F], F]:
    """Run a command: map typed core errors, interrupts and bugs to their exit code, in one place.

    `needs_root`: the command changes the host, so a user who may not (no root, state_dir not
    writable) gets one line and exit 2 before anything is touched. A read-only command that hits a
    permission error as non-root says the same instead of a traceback.
    The command returns its exit code (None is 0); this raises typer.Exit with it."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(ctx: typer.Context, *args: Any, **kwargs: Any) -> None:
            out: Out = ctx.obj.out
            if kwargs.get("json_flag"):
                out.as_json = True
            try:
                if needs_root:
                    _require_root(ctx)
                code = fn(ctx, *args, **kwargs) or 0
            except (typer.Exit, typer.Abort):
                raise
            except T3TrackError as exc:
                if _not_root() and _denied_reading(exc):
                    exc = _must_be_root(ctx, exc.message)
                if isinstance(exc, LockBusy):
                    exc.hint = _LOCK_HINT
                raise typer.Exit(fail(out, exc)) from None
            except KeyboardInterrupt:
                out.error("interrupted; sandboxes and their servers were cleaned up")
                out.hint("next: run `t3track status`; if a swap was under way, the next `t3track run` "
                         "finishes or rolls it back")
                raise typer.Exit(130) from None
            except Exception as exc:  # a bug: say so plainly, redacted, and exit as critical (an operator must look)
                if isinstance(exc, PermissionError) and _not_root():  # not a bug: a user who is not root
                    raise typer.Exit(fail(out, _must_be_root(
                        ctx, f"cannot read {exc.filename}: {exc.strerror}" if exc.filename else None))) from None
                import traceback

                from t3track.redact import redact

                out.info(redact("".join(traceback.format_exception(exc))))
                out.error(f"internal error: {exc.__class__.__name__}: {redact(str(exc))}")
                out.hint("next: run `t3track status`; an interrupted swap is recovered by the next "
                         "`t3track run`; please report this traceback")
                raise typer.Exit(int(ExitCode.CRITICAL)) from None
            if refreshes_metrics:  # not when it raised: nothing changed
                _refresh_metrics(ctx)  # also after a backup that failed for some users
            raise typer.Exit(code)

        return wrapper  # type: ignore[return-value]

    return decorate
