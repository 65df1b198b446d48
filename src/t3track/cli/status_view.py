"""`t3track status` rendered: one function for the typer command and for the plain command line
that t3track.cli.fast runs without typer."""

from __future__ import annotations

from t3track.cli.context import Ctx


def show_status(ctx: Ctx) -> None:
    from t3track import fastread
    from t3track.clock import human_age, iso
    from t3track.commands.status import status as host_status

    out = ctx.out
    # the config and state.json as the models would have them, without pydantic when plainly valid
    config = fastread.load_config(ctx.config_file)
    result = host_status(config, fastread.state_reader(config.state_dir))
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
    if result.swap_in_progress:
        rows.append(("swap", "UNFINISHED (the next `t3track run` recovers it)"))
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
