"""status, history, show: read-only views of the host, its past runs and one run's evidence."""

from typing import Annotated

import typer

from t3track.cli.render import events_table, gates_table, steps_table
from t3track.cli.typer_app import JsonOpt, app, command


@app.command()
@command()
def status(ctx: typer.Context, json_flag: JsonOpt = False) -> None:
    """Current, previous, pin, freeze, denied versions, last run, installed versions, backup age per user."""
    from t3track.cli.status_view import show_status

    show_status(ctx.obj)


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
