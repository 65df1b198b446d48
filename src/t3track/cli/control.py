"""freeze, unfreeze, pin, unpin, deny, allow: change control state, say what changed."""

from typing import Annotated, Optional

import typer

from t3track.cli.typer_app import ByOpt, JsonOpt, ReasonOpt, RingOpt, app, command, ring_of


@app.command("freeze")
@command(refreshes_metrics=True, needs_root=True)
def freeze_cmd(
    ctx: typer.Context,
    reason: ReasonOpt,
    for_: Annotated[Optional[str], typer.Option("--for", help="lift itself after this long: 90s, 15m, 6h, 7d")] = None,
    until: Annotated[Optional[str], typer.Option("--until", help="lift itself at this ISO time, e.g. 2026-12-01T06:00Z")] = None,
    ring: RingOpt = None,
    by: ByOpt = None,
    json_flag: JsonOpt = False,
) -> None:
    """Stop bumps until `unfreeze` (or until --for/--until passes). The current version keeps serving.

    With --ring, only that ring stops moving (the others go on; a later ring still takes what the
    frozen ring served long enough)."""
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
    ring = ring_of(ctx, ring)
    done = control.freeze(ctx.obj.store(), reason=reason, for_=duration, until=until, by=by, ring=ring)
    result, was = done.frozen, done.replaced
    if out.as_json:
        out.json({"frozen": result, "replaced": was, **({"ring": ring} if ring else {})})
        return
    end = f" until {iso(result.until)}" if result.until else " until unfrozen"
    out.line(f"{'ring ' + ring + ' ' if ring else ''}frozen by {result.by}{end}: {result.reason}")
    if was is not None:
        kept = " (its end is kept; give --for or --until to change it)" if (
            was.until and result.until == was.until and for_ is None and until is None) else ""
        out.line(f"  replaced the freeze by {was.by} since {iso(was.at)}"
                 + (f" until {iso(was.until)}" if was.until else " (no end)") + f": {was.reason}{kept}")
    out.line(f"  undo: t3track unfreeze{_flag(ring)}")


@app.command()
@command(refreshes_metrics=True, needs_root=True)
def unfreeze(ctx: typer.Context, ring: RingOpt = None, by: ByOpt = None, json_flag: JsonOpt = False) -> None:
    """Resume bumps (with --ring: that ring's own freeze only)."""
    from t3track.commands import control

    ring = ring_of(ctx, ring)
    store = ctx.obj.store()
    was = control.unfreeze(store, by=by, ring=ring)
    host_frozen = ring is not None and store.load().frozen is not None
    _said(ctx, {"unfrozen": was is not None, **({"ring": ring} if ring else {})},
          ("unfrozen" if was else "was not frozen; nothing changed")
          + ("; the whole host is still frozen (`t3track unfreeze`)" if host_frozen else ""))


@app.command("pin")
@command(refreshes_metrics=True, needs_root=True)
def pin_cmd(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="exact version, e.g. 0.0.42")],
    reason: ReasonOpt,
    ring: RingOpt = None,
    by: ByOpt = None,
    json_flag: JsonOpt = False,
) -> None:
    """Hold at one version instead of following the channel; the next run installs it through the gates.

    With --ring, only that ring holds (a pin is the operator's word: it needs no soak)."""
    from t3track.commands import control
    from t3track.versions import require_valid

    ring = ring_of(ctx, ring)
    config = ctx.obj.config()
    require_valid(version)  # before asking the registry about it
    done = control.pin(ctx.obj.store(config), version, reason=reason, by=by, ring=ring,
                       registry=control.registry_has(config, version))
    result, was = done.pinned, done.replaced
    out = ctx.obj.out
    for warning in done.warnings:
        out.warning(warning)
    _said(ctx, {"pinned": result, "replaced": was, "warnings": done.warnings, **({"ring": ring} if ring else {})},
          f"{'ring ' + ring + ' ' if ring else ''}pinned {result.version}: {result.reason} (the next `t3track run` "
          "moves to it through the gates if it is not current)"
          + (f"\n  replaced the pin of {was.version} by {was.by}: {was.reason}" if was else "")
          + f"\n  undo: t3track unpin{_flag(ring)}")


@app.command()
@command(refreshes_metrics=True, needs_root=True)
def unpin(ctx: typer.Context, ring: RingOpt = None, by: ByOpt = None, json_flag: JsonOpt = False) -> None:
    """Follow the channel again (with --ring: that ring's own pin only)."""
    from t3track.commands import control

    ring = ring_of(ctx, ring)
    was = control.unpin(ctx.obj.store(), by=by, ring=ring)
    _said(ctx, {"unpinned": was.version if was else None, **({"ring": ring} if ring else {})},
          f"unpinned {was.version}" if was else "was not pinned; nothing changed")


@app.command("deny")
@command(refreshes_metrics=True, needs_root=True)
def deny_cmd(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="exact version to never consider")],
    reason: ReasonOpt,
    by: ByOpt = None,
    json_flag: JsonOpt = False,
) -> None:
    """Never consider VERSION as a candidate."""
    from t3track.clock import iso
    from t3track.commands import control

    done = control.deny(ctx.obj.store(), version, reason=reason, by=by)
    result = done.denial
    said = (f"{version} was already denied by {result.by or 't3track'} at {iso(result.at)}"
            + (f" (gate {result.gate})" if result.gate else "") + f": {result.reason}; that denial is kept"
            + (f" with its evidence {result.evidence}" if result.evidence else "")) if done.already else \
        f"denied {result.version}: {result.reason}"
    _said(ctx, {"denied": result, "already": done.already}, f"{said}\n  undo: t3track allow {version}")


@app.command("reject")
@command(refreshes_metrics=True)
def reject_cmd(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="the version pending approval")],
    reason: ReasonOpt,
    by: ByOpt = None,
    json_flag: JsonOpt = False,
) -> None:
    """Deny the candidate pending approval (when.approval: manual); the next night looks for another."""
    from t3track.clock import utcnow
    from t3track.night import approval

    config = ctx.obj.config()
    result = approval.reject(config, ctx.obj.store(config), version, reason=reason, by=by, now=utcnow())
    _said(ctx, {"rejected": result}, f"rejected {result.version}: {result.reason} (denied; `t3track allow "
          f"{result.version}` considers it again)")


@app.command("allow")
@command(refreshes_metrics=True, needs_root=True)
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


def _flag(ring: str | None) -> str:
    return f" --ring {ring}" if ring else ""


@app.command("stop")
@command(needs_root=True)
def stop_cmd(
    ctx: typer.Context,
    wait: Annotated[int, typer.Option("--wait", min=0, help="seconds to wait for it to stop (0: do not wait)")] = 900,
    json_flag: JsonOpt = False,
) -> int:
    """Ask a running night (any t3track holding the lock) to stop at its next safe point, as `systemctl stop
    t3track.service` does: before the flip nothing changes, after it the live check finishes (and rolls back)."""
    from t3track.commands.stop import request_stop
    from t3track.errors import ExitCode

    out = ctx.obj.out
    done = request_stop(ctx.obj.store(), wait_s=wait)
    if out.as_json:
        out.json(done)
    elif done.pid is None:
        out.line("no t3track run holds the lock; nothing to stop")
    else:
        out.line(f"asked pid {done.pid} ({done.command}) to stop at its next safe point")
        if done.stopped:
            out.line("it stopped; `t3track status` and `t3track history` say where it left the host")
        elif done.stopped is False:
            out.line(f"it is still finishing (a live check or a rollback) after {wait}s; it stops when that is done")
    return int(ExitCode.LOCKED if done.stopped is False else ExitCode.OK)
