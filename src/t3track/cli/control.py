"""freeze, unfreeze, pin, unpin, deny, allow: change control state, say what changed."""

from typing import Annotated, Optional

import typer

from t3track.cli.app import ByOpt, JsonOpt, ReasonOpt, app, command


@app.command("freeze")
@command(refreshes_metrics=True)
def freeze_cmd(
    ctx: typer.Context,
    reason: ReasonOpt,
    for_: Annotated[Optional[str], typer.Option("--for", help="lift itself after this long: 90s, 15m, 6h, 7d")] = None,
    until: Annotated[Optional[str], typer.Option("--until", help="lift itself at this ISO time, e.g. 2026-12-01T06:00Z")] = None,
    by: ByOpt = None,
    json_flag: JsonOpt = False,
) -> None:
    """Stop bumps until `unfreeze` (or until --for/--until passes). The current version keeps serving."""
    from t3track.clock import iso
    from t3track.commands import control
    from t3track.config import parse_duration
    from t3track.errors import UsageError

    out = ctx.obj.out
    duration = None
    if for_ is not None:
        try:
            duration = parse_duration(for_)
        except ValueError as exc:
            raise UsageError(f"--for: {exc}") from None
    result = control.freeze(ctx.obj.store(), reason=reason, for_=duration, until=until, by=by)
    if out.as_json:
        out.json({"frozen": result})
        return
    end = f" until {iso(result.until)}" if result.until else " until `t3track unfreeze`"
    out.line(f"frozen by {result.by}{end}: {result.reason}")


@app.command()
@command(refreshes_metrics=True)
def unfreeze(ctx: typer.Context, by: ByOpt = None, json_flag: JsonOpt = False) -> None:
    """Resume bumps."""
    from t3track.commands import control

    was = control.unfreeze(ctx.obj.store(), by=by)
    _said(ctx, {"unfrozen": was is not None}, "unfrozen" if was else "was not frozen; nothing changed")


@app.command("pin")
@command(refreshes_metrics=True)
def pin_cmd(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="exact version, e.g. 0.0.42")],
    reason: ReasonOpt,
    by: ByOpt = None,
    json_flag: JsonOpt = False,
) -> None:
    """Hold at one version instead of following the channel; the next run installs it through the gates."""
    from t3track.commands import control

    result = control.pin(ctx.obj.store(), version, reason=reason, by=by)
    _said(ctx, {"pinned": result}, f"pinned {result.version}: {result.reason} (the next `t3track run` moves to it "
          "through the gates if it is not current)")


@app.command()
@command(refreshes_metrics=True)
def unpin(ctx: typer.Context, by: ByOpt = None, json_flag: JsonOpt = False) -> None:
    """Follow the channel again."""
    from t3track.commands import control

    was = control.unpin(ctx.obj.store(), by=by)
    _said(ctx, {"unpinned": was.version if was else None},
          f"unpinned {was.version}" if was else "was not pinned; nothing changed")


@app.command("deny")
@command(refreshes_metrics=True)
def deny_cmd(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="exact version to never consider")],
    reason: ReasonOpt,
    by: ByOpt = None,
    json_flag: JsonOpt = False,
) -> None:
    """Never consider VERSION as a candidate."""
    from t3track.commands import control

    result = control.deny(ctx.obj.store(), version, reason=reason, by=by)
    _said(ctx, {"denied": result}, f"denied {result.version}: {result.reason}")


@app.command("allow")
@command(refreshes_metrics=True)
def allow_cmd(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="a denied version to consider again")],
    by: ByOpt = None,
    json_flag: JsonOpt = False,
) -> None:
    """Consider VERSION again (and forget its failure count)."""
    from t3track.commands import control

    was = control.allow(ctx.obj.store(), version, by=by)
    _said(ctx, {"allowed": version, "was_denied": was is not None},
          f"allowed {version}" if was else f"{version} was not denied; failure count cleared")


def _said(ctx: typer.Context, document: dict[str, object], line: str) -> None:
    out = ctx.obj.out
    if out.as_json:
        out.json(document)
    else:
        out.line(line)
