"""The command line: parse options, call one core function, render the result, pick the exit code.

Nothing else lives here: the core never prints and never exits.
"""


import functools
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from t3track import __version__, ops
from t3track.config import Config, config_path, host_problems, load_config, parse_duration
from t3track.errors import EXIT_CODE_HELP, ExitCode, LockBusy, T3TrackError, UsageError
from t3track.output import Out, human_age
from t3track.state import StateStore, iso

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
config_app = typer.Typer(help="Check the config and the host.", no_args_is_help=True)
app.add_typer(config_app, name="config")


class Ctx:
    def __init__(self, config_file: Optional[Path], as_json: bool):
        self.config_file = config_file
        self.as_json = as_json

    def config(self) -> Config:
        return load_config(self.config_file)

    def store(self, config: Config | None = None) -> StateStore:
        return StateStore((config or self.config()).state_dir)


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


JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON document on stdout")]


def _out(ctx: typer.Context, json_flag: bool) -> Out:
    if json_flag:
        ctx.obj.as_json = True
    return Out(ctx.obj.as_json)


def _fail(out: Out, exc: T3TrackError) -> None:
    code = exc.exit_code
    if out.as_json:
        doc: dict[str, Any] = {"error": exc.message, "exit_code": int(code)}
        if exc.problems:
            doc["problems"] = exc.problems
        if exc.hint:
            doc["hint"] = exc.hint
        if isinstance(exc, LockBusy):
            doc["holder_pid"] = exc.holder_pid
        out.json(doc)
    out.error(exc.message)
    for problem in exc.problems:
        out.err.print(f"  - {problem}", markup=False)
    if exc.hint:
        out.err.print(f"  next: {exc.hint}", markup=False)
    raise typer.Exit(int(code))


# operator actions that change what the metrics report (run, revert, adopt and drill refresh them themselves)
_OPERATOR_ACTIONS = {"freeze_cmd", "unfreeze", "pin_cmd", "unpin", "deny_cmd", "allow_cmd", "backup_cmd"}


def _refresh_metrics(ctx: typer.Context, out: Out) -> None:
    from t3track import afterrun

    try:
        config = ctx.obj.config()
        problem = afterrun.after_action(config, ctx.obj.store(config))
    except T3TrackError:
        return  # the action itself already reported what is wrong with the config or state
    if problem:
        out.err.print(f"warning: {problem}", markup=False)


def command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map typed core errors to their exit code and message, in one place."""

    @functools.wraps(fn)
    def wrapper(ctx: typer.Context, *args: Any, **kwargs: Any) -> Any:
        out = _out(ctx, kwargs.get("json_flag", False))
        refused = False
        try:
            return fn(ctx, out, *args, **{k: v for k, v in kwargs.items()})
        except T3TrackError as exc:
            refused = True  # nothing changed: nothing to refresh, and nothing may be written
            _fail(out, exc)
        except KeyboardInterrupt:
            refused = True
            out.error("interrupted; sandboxes and their servers were cleaned up")
            out.err.print("  next: run `t3track status`; if a swap was under way, the next `t3track run` "
                          "finishes or rolls it back", markup=False)
            raise typer.Exit(130)
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:  # a bug: say so plainly, redacted, and exit as critical (an operator must look)
            refused = True
            import traceback

            from t3track.redact import redact

            out.err.print(redact("".join(traceback.format_exception(exc))), markup=False)
            out.error(f"internal error: {exc.__class__.__name__}: {redact(str(exc))}")
            out.err.print("  next: run `t3track status`; an interrupted swap is recovered by the next "
                          "`t3track run`; please report this traceback", markup=False)
            raise typer.Exit(int(ExitCode.CRITICAL))
        finally:
            if fn.__name__ in _OPERATOR_ACTIONS and not refused:
                _refresh_metrics(ctx, out)  # also after a backup that failed for some users

    # typer reads the signature: hide `out` from it.
    import inspect

    sig = inspect.signature(fn)
    params = [p for name, p in sig.parameters.items() if name != "out"]
    wrapper.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    return wrapper


def _not_built(out: Out, name: str, issue: str) -> None:
    raise UsageError(f"`t3track {name}` is not built yet", hint=f"it arrives with the {issue} work")


# ---------------------------------------------------------------- status and history


@app.command()
@command
def status(ctx: typer.Context, out: Out, json_flag: JsonOpt = False) -> None:
    """Current, previous, pin, freeze, denied versions, last run, installed versions, backup age per user."""
    config = ctx.obj.config()
    result = ops.status(config, ctx.obj.store(config))
    if out.as_json:
        out.json(result.to_json())
        return
    out.line(f"package     {result.package} (channel {result.channel})")
    out.line(f"current     {result.current or '-'}" + (f"  -> {result.current_link}" if result.current_link else ""))
    out.line(f"previous    {result.previous or '-'}")
    out.line("pinned      " + (f"{result.pinned.version} by {result.pinned.by}: {result.pinned.reason}" if result.pinned else "-"))
    out.line("frozen      " + (f"by {result.frozen.by} since {iso(result.frozen.at)}"
                               + (f" until {iso(result.frozen.until)}" if result.frozen.until else " (no end)")
                               + f": {result.frozen.reason}" if result.frozen else "-"))
    lr = result.last_run
    out.line("last run    " + (f"{iso(lr.at)} {lr.outcome} (exit {lr.exit_code})"
                               + (f" candidate {lr.candidate}" if lr.candidate else "")
                               + (f"  (t3track show {lr.run_id})" if lr.run_id else "") if lr else "-"))
    out.line(f"installed   {', '.join(result.installed) or '-'}")
    if result.swap_in_progress:
        out.line("swap        UNFINISHED (the next `t3track run` recovers it)")
    if result.denied:
        out.table("denied", ["version", "gate", "at", "reason"],
                  [[d.version, d.gate or "operator", iso(d.at), d.reason] for d in result.denied])
    if result.users:
        out.table("users", ["user", "port", "newest backup"],
                  [[u.name, u.port, human_age(u.backup_age_s) + (" old" if u.backup_age_s is not None else "")]
                   for u in result.users])
    for warning in result.warnings:
        out.line(f"warning: {warning}")


@app.command()
@command
def history(
    ctx: typer.Context,
    out: Out,
    n: Annotated[int, typer.Option("-n", "--limit", min=1, help="how many events, newest first")] = 20,
    json_flag: JsonOpt = False,
) -> None:
    """Past runs and operator actions, newest first."""
    events = ctx.obj.store().history(limit=n)
    if out.as_json:
        out.json({"events": events})
        return
    if not events:
        out.line("no history yet")
        return
    skip = {"at", "event", "by"}
    out.table("history (newest first)", ["at", "event", "by", "details"],
              [[e.get("at"), e.get("event"), e.get("by") or "",
                " ".join(f"{k}={v}" for k, v in e.items() if k not in skip and v not in (None, "", [], {}))]
               for e in events])


@app.command()
@command
def show(
    ctx: typer.Context,
    out: Out,
    run_id: Annotated[str, typer.Argument(help="a run id from `history` (a unique prefix or `last` will do)")],
    json_flag: JsonOpt = False,
) -> None:
    """One run: its result, gates, notes, the evidence files kept for it and its history lines."""
    from t3track.evidence import show as show_run

    record = show_run(ctx.obj.store(), run_id)
    if out.as_json:
        out.json(record.to_json())
        return
    doc = record.result or {}
    out.line(f"run         {record.run_id}" + (" (dry-run)" if doc.get("dry_run") else ""))
    if doc:
        out.line(f"outcome     {doc.get('outcome')} (exit {doc.get('exit_code')})")
        out.line(f"versions    {doc.get('from') or '-'} -> {doc.get('to') or '-'} (candidate {doc.get('candidate') or '-'})")
        out.line(f"reason      {doc.get('reason')}")
        for note in doc.get("notes") or []:
            out.line(f"  note: {note}")
        if doc.get("gates"):
            out.table("gates", ["gate", "user", "outcome", "time", "detail"],
                      [[g.get("name"), g.get("user"), g.get("outcome"), f"{g.get('duration_s', 0):.1f}s", g.get("detail")]
                       for g in doc["gates"]])
        if doc.get("steps"):
            out.table("steps", ["step", "at", "time"],
                      [[s.get("name"), f"+{s.get('at_s', 0):.2f}s", f"{s.get('duration_s', 0):.2f}s"] for s in doc["steps"]])
    else:
        out.line("result      none kept (a run from before evidence was kept, or its result.json is gone)")
    out.line(f"evidence    {record.path}" + ("" if record.path.is_dir() else " (pruned or never written)"))
    if record.files:
        out.table("files", ["file", "bytes"], [[f.name, f.size] for f in record.files])
    if record.events:
        skip = {"at", "event", "by", "run_id", "gates"}
        out.table("history", ["at", "event", "details"],
                  [[e.get("at"), e.get("event"), " ".join(f"{k}={v}" for k, v in e.items()
                                                            if k not in skip and v not in (None, "", [], {}))]
                   for e in record.events])


# ---------------------------------------------------------------- operator actions

ReasonOpt = Annotated[str, typer.Option("--reason", help="why: recorded in history and shown in status")]
ByOpt = Annotated[Optional[str], typer.Option("--by", help="who (default: $SUDO_USER or the login name)")]


@app.command("freeze")
@command
def freeze_cmd(
    ctx: typer.Context,
    out: Out,
    reason: ReasonOpt,
    for_: Annotated[Optional[str], typer.Option("--for", help="lift itself after this long: 90s, 15m, 6h, 7d")] = None,
    until: Annotated[Optional[str], typer.Option("--until", help="lift itself at this ISO time, e.g. 2026-12-01T06:00Z")] = None,
    by: ByOpt = None,
    json_flag: JsonOpt = False,
) -> None:
    """Stop bumps until `unfreeze` (or until --for/--until passes). The current version keeps serving."""
    duration = None
    if for_ is not None:
        try:
            duration = parse_duration(for_)
        except ValueError as exc:
            raise UsageError(f"--for: {exc}") from None
    result = ops.freeze(ctx.obj.store(), reason=reason, for_=duration, until=until, by=by)
    if out.as_json:
        out.json({"frozen": {"reason": result.reason, "by": result.by, "at": iso(result.at),
                             "until": iso(result.until) if result.until else None}})
    else:
        out.line(f"frozen by {result.by}" + (f" until {iso(result.until)}" if result.until else " until `t3track unfreeze`")
                 + f": {result.reason}")


@app.command()
@command
def unfreeze(ctx: typer.Context, out: Out, by: ByOpt = None, json_flag: JsonOpt = False) -> None:
    """Resume bumps."""
    was = ops.unfreeze(ctx.obj.store(), by=by)
    if out.as_json:
        out.json({"unfrozen": was is not None})
    else:
        out.line("unfrozen" if was else "was not frozen; nothing changed")


@app.command("pin")
@command
def pin_cmd(
    ctx: typer.Context,
    out: Out,
    version: Annotated[str, typer.Argument(help="exact version, e.g. 0.0.42")],
    reason: ReasonOpt,
    by: ByOpt = None,
    json_flag: JsonOpt = False,
) -> None:
    """Hold at one version instead of following the channel; the next run installs it through the gates."""
    result = ops.pin(ctx.obj.store(), version, reason=reason, by=by)
    if out.as_json:
        out.json({"pinned": {"version": result.version, "reason": result.reason, "by": result.by, "at": iso(result.at)}})
    else:
        out.line(f"pinned {result.version}: {result.reason} (the next `t3track run` moves to it through the gates if it is not current)")


@app.command()
@command
def unpin(ctx: typer.Context, out: Out, by: ByOpt = None, json_flag: JsonOpt = False) -> None:
    """Follow the channel again."""
    was = ops.unpin(ctx.obj.store(), by=by)
    if out.as_json:
        out.json({"unpinned": was.version if was else None})
    else:
        out.line(f"unpinned {was.version}" if was else "was not pinned; nothing changed")


@app.command("deny")
@command
def deny_cmd(
    ctx: typer.Context,
    out: Out,
    version: Annotated[str, typer.Argument(help="exact version to never consider")],
    reason: ReasonOpt,
    by: ByOpt = None,
    json_flag: JsonOpt = False,
) -> None:
    """Never consider VERSION as a candidate."""
    result = ops.deny(ctx.obj.store(), version, reason=reason, by=by)
    if out.as_json:
        out.json({"denied": {"version": result.version, "reason": result.reason, "at": iso(result.at)}})
    else:
        out.line(f"denied {result.version}: {result.reason}")


@app.command("allow")
@command
def allow_cmd(
    ctx: typer.Context,
    out: Out,
    version: Annotated[str, typer.Argument(help="a denied version to consider again")],
    by: ByOpt = None,
    json_flag: JsonOpt = False,
) -> None:
    """Consider VERSION again (and forget its failure count)."""
    was = ops.allow(ctx.obj.store(), version, by=by)
    if out.as_json:
        out.json({"allowed": version, "was_denied": was is not None})
    else:
        out.line(f"allowed {version}" if was else f"{version} was not denied; failure count cleared")


# ---------------------------------------------------------------- config


@config_app.command("check")
@command
def config_check(ctx: typer.Context, out: Out, json_flag: JsonOpt = False) -> None:
    """Validate the config and the host (paths, npm, users); every problem listed, exit 2 if any."""
    path = config_path(ctx.obj.config_file)
    config = ctx.obj.config()  # file problems raise ConfigError with every path listed
    problems = host_problems(config)
    if out.as_json:
        out.json({"config": str(path), "ok": not problems, "problems": problems})
    else:
        out.line(f"{path}: config is valid")
        for problem in problems:
            out.line(f"  - {problem}")
        out.line("host: ok" if not problems else f"host: {len(problems)} problem(s)")
    if problems:
        raise typer.Exit(int(ExitCode.USAGE))


# ---------------------------------------------------------------- the nightly flow and friends


def _report(out: Out, report: Any) -> None:
    """Render a NightReport and exit with its code."""
    if out.as_json:
        out.json(report.to_json())
    else:
        if report.recovered:
            out.line(f"recovered: {report.recovered}")
        for note in report.notes:
            out.line(f"  note: {note}")
        if report.gates:
            out.table("gates", ["gate", "user", "outcome", "time", "detail"],
                      [[g.name, g.user, g.outcome, f"{g.duration_s:.1f}s", g.detail] for g in report.gates])
        verb = "dry-run" if report.dry_run else report.outcome
        # the verdict of a night that failed the unit is an error in the journal, a critical one crit
        priority = {ExitCode.OK: None, ExitCode.LOCKED: None, ExitCode.CRITICAL: 2}.get(report.exit_code, 3)
        out.line(f"{verb}: {report.reason}", priority=priority)
        if report.evidence:
            out.line(f"evidence: {report.evidence}")
    raise typer.Exit(int(report.exit_code))


@app.command()
@command
def run(ctx: typer.Context, out: Out, json_flag: JsonOpt = False) -> None:
    """The nightly job: resolve -> install -> gates -> swap -> verify, rolling back on a failed verify."""
    from t3track.night import run_night

    config = ctx.obj.config()
    _report(out, run_night(config, ctx.obj.store(config), progress=out.info))


@app.command("dry-run")
@command
def dry_run(ctx: typer.Context, out: Out, json_flag: JsonOpt = False) -> None:
    """Resolve -> install -> gates, never swaps; says what `run` would do and why."""
    from t3track.night import run_night

    config = ctx.obj.config()
    _report(out, run_night(config, ctx.obj.store(config), dry_run=True, progress=out.info))


@app.command()
@command
def adopt(ctx: typer.Context, out: Out, version: Annotated[str, typer.Argument(help="the version to install and adopt")],
          json_flag: JsonOpt = False) -> None:
    """First install on a host: install VERSION, move a hand-made root/current into versions/, point current at it, verify."""
    from t3track.adopt import adopt as adopt_version

    config = ctx.obj.config()
    _report(out, adopt_version(config, ctx.obj.store(config), version, progress=out.info))


@app.command()
@command
def revert(
    ctx: typer.Context,
    out: Out,
    to: Annotated[Optional[str], typer.Option("--to", help="an installed version (default: previous)")] = None,
    restore_state: Annotated[bool, typer.Option("--restore-state", help="also restore each user's database from the pre-swap snapshot")] = False,
    json_flag: JsonOpt = False,
) -> None:
    """Go back to the previous (or named) installed version, with the live check; denies the version it leaves."""
    from t3track.revert import revert as revert_to

    config = ctx.obj.config()
    _report(out, revert_to(config, ctx.obj.store(config), to=to, restore_state=restore_state, progress=out.info))


@app.command()
@command
def drill(
    ctx: typer.Context,
    out: Out,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    json_flag: JsonOpt = False,
) -> None:
    """Prove rollback works here: swap to a copy of the current version, treat its live check as failed, roll back for real."""
    from t3track import drill as drill_mod

    config = ctx.obj.config()
    store = ctx.obj.store(config)
    plan = drill_mod.plan_drill(config, store)
    try:
        confirmed = yes or typer.confirm(plan.question, default=False, err=True)
    except typer.Abort:  # no terminal to answer on
        confirmed = False
    if not confirmed:
        raise UsageError("the drill was not confirmed; nothing changed", hint="pass --yes to run it without asking")
    report = drill_mod.run_drill(config, store, progress=out.info)
    if not out.as_json:
        out.table("drill steps", ["at", "time", "step"],
                  [[f"+{s.at_s:.2f}s", f"{s.duration_s:.2f}s", s.name] for s in report.steps])
        out.table("downtime", ["user", "seconds"], [[u, f"{d:.2f}"] for u, d in report.downtime_s.items()])
        out.line(f"simulated: {report.simulated}")
    _report(out, report)


@app.command("backup")
@command
def backup_cmd(
    ctx: typer.Context,
    out: Out,
    user: Annotated[Optional[str], typer.Option("--user", help="only this user (default: every user)")] = None,
    json_flag: JsonOpt = False,
) -> None:
    """Online VACUUM INTO backup of each user's state, timeout-guarded, verified, pruned."""
    from t3track.backup import backup_all

    results = backup_all(ctx.obj.config(), only_user=user, progress=out.info)
    failed = [r for r in results if not r.ok]
    code = ExitCode.ENVIRONMENT if failed else ExitCode.OK
    if out.as_json:
        out.json({"ok": not failed, "exit_code": int(code), "users": [r.to_json() for r in results]})
    for r in results:
        if r.ok and r.backup:
            sizes = ", ".join(f"{name} {f['size'] / 1e6:.1f} MB" for name, f in r.backup.files.items())
            out.line(f"{r.user}: {r.backup.path} ({sizes}) in {r.duration_s:.1f}s"
                     + (f"; pruned {len(r.pruned)} old backup(s)" if r.pruned else ""))
    for r in failed:
        out.error(r.error or f"{r.user}: backup failed")
        if r.hint:
            out.err.print(f"  next: {r.hint}", markup=False)
    if failed:
        out.error(f"backup failed for {', '.join(r.user for r in failed)}")
        raise typer.Exit(int(code))


@app.command()
@command
def probe(
    ctx: typer.Context,
    out: Out,
    url: Annotated[str, typer.Option("--url", help="the server, e.g. http://127.0.0.1:3773")],
    base_dir: Annotated[Path, typer.Option("--base-dir", help="the server's base dir (to mint a pairing credential)")],
    executable: Annotated[Optional[Path], typer.Option("--executable", help="the t3 executable that mints (default: root/current/<executable>)")] = None,
    json_flag: JsonOpt = False,
) -> None:
    """The pairing handshake (mint -> credential -> cookie, replayed, one-time) against any running server."""
    from t3track import probe as probe_mod

    timeout = probe_mod.DEFAULT_TIMEOUT_S
    if executable is None:  # only then is the config needed
        config = ctx.obj.config()
        executable = config.executable_in(config.root / "current")
        timeout = config.gates.probe_timeout.total_seconds()
    result = probe_mod.pairing_probe(url, base_dir, executable, timeout=timeout,
                                     run_as=probe_mod.base_dir_owner(base_dir))
    if out.as_json:
        out.json(result.to_json())
    else:
        for step in result.steps:
            status = f" {step.status}" if step.status is not None else ""
            out.line(f"  {'ok  ' if step.ok else 'FAIL'} {step.name:<9}{status}  {step.detail}")
        if result.ok:
            out.line(f"pairing probe passed: {result.detail}")
    if not result.ok:
        status = f" (HTTP {result.status})" if result.status is not None else ""
        out.error(f"pairing probe failed at step {result.step}{status}: {result.detail}")
        raise typer.Exit(int(ExitCode.REFUSED))


def _interrupt(signum: int, _frame: Any) -> None:
    # systemd stops a unit with SIGTERM: unwind like Ctrl-C so every sandbox is removed and every
    # process group we started is ended (Python runs no `finally` on an unhandled SIGTERM)
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    import signal

    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
