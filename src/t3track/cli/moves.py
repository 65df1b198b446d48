"""run, dry-run, adopt, revert, drill: the commands that move versions; all render through render_run."""

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from t3track.cli.render import render_run, steps_table
from t3track.cli.typer_app import JsonOpt, RingOpt, app, command

IgnoreBusyOpt = Annotated[bool, typer.Option(
    "--ignore-busy", help="stop users' servers even while an agent works for them (default: wait up to "
    "swap.busy_wait, then leave them on the old version tonight)")]

if TYPE_CHECKING:
    from t3track.night.pipeline import ExactTarget


@app.command()
@command(needs_root=True)
def run(
    ctx: typer.Context,
    to: Annotated[Optional[str], typer.Option("--to", help="take exactly this version (install, every gate, swap, live check), whatever the channel says; refused if it is denied or not newer")] = None,
    allow_downgrade: Annotated[bool, typer.Option("--allow-downgrade", help="with --to: also take a version older than current")] = False,
    ignore_busy: IgnoreBusyOpt = False,
    json_flag: JsonOpt = False,
) -> int:
    """The nightly job: resolve -> install -> gates -> swap -> verify, rolling back on a failed verify."""
    from t3track.errors import UsageError
    from t3track.night.pipeline import ExactTarget
    from t3track.versions import require_valid

    if allow_downgrade and to is None:
        raise UsageError("--allow-downgrade needs --to VERSION")
    target = ExactTarget(require_valid(to, "--to version"), allow_downgrade) if to is not None else None
    if target is not None:  # the operator's typo is a usage error, never a refused night
        from t3track.commands.target import check_target

        config = ctx.obj.config()
        check_target(config, ctx.obj.store(config), target.version, allow_downgrade=allow_downgrade)
    return _night(ctx, dry_run=False, target=target, ignore_busy=ignore_busy)


@app.command("dry-run")
@command(needs_root=True)
def dry_run(ctx: typer.Context, json_flag: JsonOpt = False) -> int:
    """Resolve -> install -> gates, never swaps; says what `run` would do and why."""
    return _night(ctx, dry_run=True)


def _night(ctx: typer.Context, *, dry_run: bool, target: "ExactTarget | None" = None, ignore_busy: bool = False) -> int:
    from t3track.night.pipeline import run_night
    from t3track.state import operator_name

    config = ctx.obj.config()
    by = operator_name() if target is not None else "t3track"  # `run --to` is the operator's move
    return render_run(ctx.obj.out, run_night(config, ctx.obj.store(config), dry_run=dry_run,
                                             progress=ctx.obj.out.info, target=target, by=by,
                                             ignore_busy=ignore_busy))


@app.command()
@command(needs_root=True)
def approve(
    ctx: typer.Context,
    version: Annotated[Optional[str], typer.Argument(help="the pending version (default: the one pending)")] = None,
    ring: RingOpt = None,
    ignore_busy: IgnoreBusyOpt = False,
    json_flag: JsonOpt = False,
) -> int:
    """Swap the candidate a night left pending (when.approval: manual): live check and rollback as always.

    Its gates run again first when they passed longer ago than when.approval_max_age. Never held by a
    swap window. On a host with rings, each ring's move is approved on its own (--ring)."""
    from t3track.night.pipeline import Approve, run_night

    config = ctx.obj.config()
    return render_run(ctx.obj.out, run_night(config, ctx.obj.store(config), progress=ctx.obj.out.info,
                                             approve=Approve(version, ring), ignore_busy=ignore_busy))


@app.command()
@command(needs_root=True)
def adopt(ctx: typer.Context, version: Annotated[str, typer.Argument(help="the version to install and adopt")],
          json_flag: JsonOpt = False) -> int:
    """First install on a host: install VERSION, move a hand-made root/current into versions/, point current at it, verify."""
    from t3track.commands.adopt import adopt as adopt_version

    config = ctx.obj.config()
    return render_run(ctx.obj.out, adopt_version(config, ctx.obj.store(config), version, progress=ctx.obj.out.info))


@app.command()
@command(needs_root=True)
def revert(
    ctx: typer.Context,
    to: Annotated[Optional[str], typer.Option("--to", help="an installed version (default: previous)")] = None,
    restore_state: Annotated[bool, typer.Option("--restore-state", help="also restore each user's database from the pre-swap snapshot")] = False,
    ring: RingOpt = None,
    ignore_busy: IgnoreBusyOpt = False,
    json_flag: JsonOpt = False,
) -> int:
    """Go back to the previous (or named) installed version, with the live check; denies the version it leaves.

    On a host with rings, --ring names the ring to revert (its users only; the others keep serving)."""
    from t3track.commands.revert import revert as revert_to

    config = ctx.obj.config()
    return render_run(ctx.obj.out, revert_to(config, ctx.obj.store(config), to=to, restore_state=restore_state,
                                             ring=ring, ignore_busy=ignore_busy, progress=ctx.obj.out.info))


@app.command()
@command(needs_root=True)
def drill(
    ctx: typer.Context,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    ring: RingOpt = None,
    ignore_busy: IgnoreBusyOpt = False,
    json_flag: JsonOpt = False,
) -> int:
    """Prove rollback works here: swap to a copy of the current version, treat its live check as failed, roll back for real.

    On a host with rings, --ring names the ring to drill (only its users' servers stop)."""
    from t3track.commands import drill as drill_mod
    from t3track.errors import UsageError

    out = ctx.obj.out
    config = ctx.obj.config()
    store = ctx.obj.store(config)
    plan = drill_mod.plan_drill(config, store, ring)
    try:
        confirmed = yes or typer.confirm(plan.question, default=False, err=True)
    except (typer.Abort, OSError):  # no terminal to answer on, or a closed one
        confirmed = False
    if not confirmed:
        raise UsageError("the drill was not confirmed; nothing changed", hint="pass --yes to run it without asking")
    report = drill_mod.run_drill(config, store, ring=ring, ignore_busy=ignore_busy, progress=out.info)
    if not out.as_json:
        steps_table(out, report.steps)
        out.table("downtime", ["user", "seconds"], [[u, f"{d:.2f}"] for u, d in report.downtime_s.items()])
        out.line(f"simulated: {report.simulated}")
    return render_run(out, report)


@app.command()
@command()
def smoke(
    ctx: typer.Context,
    version: Annotated[str, typer.Argument(help="the version to smoke, e.g. 0.0.43-nightly.20261201.3100")],
    package: Annotated[str, typer.Option("--package", help="npm package")] = "t3",
    registry: Annotated[Optional[str], typer.Option("--registry", help="npm registry URL (default: `npm config get registry`)")] = None,
    from_version: Annotated[Optional[str], typer.Option("--from", help="serve this version once first, so VERSION migrates its real database; adds sessions-survive")] = None,
    junit: Annotated[Optional[Path], typer.Option("--junit", help="write JUnit XML here: one testcase per gate")] = None,
    executable: Annotated[str, typer.Option("--executable", help="the server executable, relative to the install prefix")] = "node_modules/.bin/t3",
    evidence: Annotated[Optional[Path], typer.Option("--evidence", help="keep the redacted gate logs in this directory")] = None,
    serve_timeout: Annotated[int, typer.Option("--serve-timeout", min=1, help="seconds the candidate has to serve")] = 60,
    json_flag: JsonOpt = False,
) -> int:
    """For CI, no host or config needed: install VERSION in a scratch dir, run sandbox-serve and pairing-probe (and sessions-survive with --from), clean up."""
    from t3track.commands import smoke as smoke_mod

    report = smoke_mod.run_smoke(smoke_mod.SmokeOptions(
        version=version, package=package, registry=registry, from_version=from_version, executable=executable,
        serve_timeout_s=serve_timeout, evidence=evidence), progress=ctx.obj.out.info)
    if junit is not None:
        smoke_mod.write_junit(report, package, junit)
    return render_run(ctx.obj.out, report)
