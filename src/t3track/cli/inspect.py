"""status, history, show: read-only views of the host, its past runs and one run's evidence."""

from typing import Annotated

import typer

from t3track.cli.render import events_table, gates_table, steps_table
from t3track.cli.typer_app import JsonOpt, app, command


@app.command()
@command()
def status(ctx: typer.Context, json_flag: JsonOpt = False) -> None:
    """Current, previous, pin, freeze, denied versions, last run, installed versions, backup age per user."""
    from t3track.clock import human_age, iso
    from t3track.commands.status import status as host_status

    out = ctx.obj.out
    config = ctx.obj.config()
    result = host_status(config, ctx.obj.store(config))
    if out.as_json:
        out.json(result)
        return
    pin, frozen, last = result.pinned, result.frozen, result.last_run
    rows = [
        ("package", f"{result.package} (channel {result.channel})"),
        ("current", (result.current or "-") + (f"  -> {result.current_link}" if result.current_link else "")),
        ("previous", result.previous or "-"),
        ("pinned", f"{pin.version} by {pin.by}: {pin.reason}" if pin else "-"),
        ("frozen", "-" if not frozen else f"by {frozen.by} since {iso(frozen.at)}"
         + (f" until {iso(frozen.until)}" if frozen.until else " (no end)") + f": {frozen.reason}"),
        ("last run", "-" if not last else f"{iso(last.at)} {last.outcome} (exit {last.exit_code})"
         + (f" candidate {last.candidate}" if last.candidate else "")
         + (f"  (t3track show {last.run_id})" if last.run_id else "")),
        ("installed", ", ".join(result.installed) or "-"),
    ]
    if result.night is not None:
        rows.append(("night", f"IN PROGRESS: pid {result.night.pid}, {result.night.phase}, since "
                              f"{result.night.since or '?'} (`t3track stop` or `systemctl stop t3track.service` "
                              f"asks it to stop at a safe point)"))
    elif result.swap_in_progress:
        rows.append(("swap", "UNFINISHED (the next `t3track run` recovers it)"))
    if result.window is not None:
        rows.append(("window", "open now: " + result.window.reason if result.window.open else
                     f"closed: {result.window.reason}"))
    for p in result.pending:
        rows.append(("pending", f"{p.from_version or '-'} -> {p.version}" + (f" (ring {p.ring})" if p.ring else "")
                     + f" since {iso(p.since)}, gates passed {iso(p.gates_passed_at)}: `{p.approve_command()}`"))
    out.fields(rows)
    if result.denied:
        out.table("denied", ["version", "gate", "at", "reason"],
                  [[d.version, d.gate or "operator", iso(d.at), d.reason] for d in result.denied])
    if result.rings:
        out.table("rings", ["ring", "users", "version", "soaked", "soak", "pin/freeze", "next"],
                  [[r.name, ", ".join(r.users), (r.current or "-") + ("" if r.linked == r.current else
                                                                     f" (link: {r.linked or 'none'})"),
                    human_age(r.soaked_s) if r.soaked_s is not None else "-", human_age(r.soak) if r.soak else "-",
                    "; ".join([*([f"pinned {r.pinned.version}"] if r.pinned else []),
                               *(["frozen"] if r.frozen else [])]) or "-", r.next or "follows the channel"]
                   for r in result.rings])
    if result.users:
        ringed = bool(result.rings)
        out.table("users", ["user", *(["ring", "linked"] if ringed else []), "port", "serving", "database",
                            "newest backup"],
                  [[u.name, *([u.ring or "-", u.linked or "-"] if ringed else []), u.port,
                    (u.serving or "not answering") + (" (DRIFT)" if u.drift else ""),
                    f"{u.database or '-'}" + (f" @{u.migration}" if u.migration is not None else ""),
                    human_age(u.backup_age_s) + (" old" if u.backup_age_s is not None else "")]
                   for u in result.users])
    for warning in result.warnings:
        out.line(f"warning: {warning}")


@app.command()
@command()
def check(ctx: typer.Context, json_flag: JsonOpt = False) -> int:
    """For monitoring (Nagios, Icinga, Checkmk, Zabbix): one line, exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.

    CRITICAL: a server down or on another version than its link, a journal a killed run left, the tracker
    frozen by itself, no run for 36 h. WARNING: an operator's freeze older than a week, a stale backup,
    rings apart for a week, three refused nights. Never takes the lock; runs as a monitoring user given
    read access (README, "Monitoring")."""
    from t3track.commands.check import check as host_check

    out = ctx.obj.out
    try:
        config = ctx.obj.config()
    except Exception as exc:  # noqa: BLE001 - a check that cannot even read its config is UNKNOWN, not a crash
        message = getattr(exc, "message", None) or str(exc)
        out.json({"status": "UNKNOWN", "summary": message, "exit_code": 3}) if out.as_json \
            else out.line(f"T3TRACK UNKNOWN - cannot read the config: {message}")
        return 3
    result = host_check(config, ctx.obj.store(config))
    if out.as_json:
        out.json(result)
    else:
        out.line(result.line)
        for problem in [*result.critical, *result.unknown, *result.warning][1:]:
            out.line(problem)
    return result.exit_code


@app.command()
@command()
def history(
    ctx: typer.Context,
    n: Annotated[int, typer.Option("-n", "--limit", min=1, help="how many events, newest first")] = 20,
    json_flag: JsonOpt = False,
) -> None:
    """Past runs and operator actions, newest first."""
    out = ctx.obj.out
    events = ctx.obj.store().history(limit=n)
    if out.as_json:
        out.json({"events": events})
    elif not events:
        out.line("no history yet")
    else:
        events_table(out, "history (newest first)", events, with_by=True)


@app.command()
@command()
def show(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="a run id from `history` (a unique prefix or `last` will do)")],
    json_flag: JsonOpt = False,
) -> None:
    """One run: its result, gates, notes, the evidence files kept for it and its history lines."""
    from t3track.commands.show import show as show_run

    out = ctx.obj.out
    record = show_run(ctx.obj.store(), run_id)
    if out.as_json:
        out.json(record)
        return
    doc = record.result or {}
    rows = [("run", record.run_id + (" (dry-run)" if doc.get("dry_run") else ""))]
    if doc:
        rows += [("outcome", f"{doc.get('outcome')} (exit {doc.get('exit_code')})"),
                 ("versions", f"{doc.get('from') or '-'} -> {doc.get('to') or '-'} "
                              f"(candidate {doc.get('candidate') or '-'})"),
                 ("reason", str(doc.get("reason")))]
    else:
        rows.append(("result", "none kept (a run from before evidence was kept, or its result.json is gone)"))
    out.fields(rows)
    for note in doc.get("notes") or []:
        out.line(f"  note: {note}")
    if doc.get("gates"):
        gates_table(out, doc["gates"])
    if doc.get("steps"):
        steps_table(out, doc["steps"])
    out.fields([("evidence", f"{record.path}" + ("" if record.path.is_dir() else " (pruned or never written)"))])
    if record.files:
        out.table("files", ["file", "bytes"], [[f.name, f.size] for f in record.files])
    if record.events:
        events_table(out, "history", record.events, with_by=False)
