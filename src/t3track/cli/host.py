"""backup, probe, config check: the commands that look at or act on the host itself."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from t3track.cli.typer_app import JsonOpt, app, command, config_app


@app.command("backup")
@command(refreshes_metrics=True, needs_root=True)
def backup_cmd(
    ctx: typer.Context,
    user: Annotated[Optional[str], typer.Option("--user", help="only this user (default: every user)")] = None,
    json_flag: JsonOpt = False,
) -> int:
    """Online VACUUM INTO backup of each user's state, timeout-guarded, verified, pruned."""
    from t3track.errors import ExitCode
    from t3track.host.backup import backup_all

    out = ctx.obj.out
    results = backup_all(ctx.obj.config(), only_user=user, progress=out.info)
    failed = [r for r in results if not r.ok]
    code = ExitCode.ENVIRONMENT if failed else ExitCode.OK
    if out.as_json:
        out.json({"ok": not failed, "exit_code": int(code), "users": results})
    for r in results:
        if r.ok and r.backup:
            sizes = ", ".join(f"{name} {f['size'] / 1e6:.1f} MB" for name, f in r.backup.files.items())
            out.line(f"{r.user}: {r.backup.path} ({sizes}) in {r.duration_s:.1f}s"
                     + (f"; pruned {len(r.pruned)} old backup(s)" if r.pruned else ""))
    for r in failed:
        out.error(r.error or f"{r.user}: backup failed")
        if r.hint:
            out.hint(f"next: {r.hint}")
    if failed:
        out.error(f"backup failed for {', '.join(r.user for r in failed)}")
    return int(code)


@app.command()
@command()
def probe(
    ctx: typer.Context,
    url: Annotated[str, typer.Option("--url", help="the server, e.g. http://127.0.0.1:3773")],
    base_dir: Annotated[Path, typer.Option("--base-dir", help="the server's base dir (to mint a pairing credential)")],
    executable: Annotated[Optional[Path], typer.Option("--executable", help="the t3 executable that mints (default: root/current/<executable>)")] = None,
    json_flag: JsonOpt = False,
) -> int:
    """The pairing handshake (mint -> credential -> cookie, replayed, one-time) against any running server."""
    from t3track.errors import ExitCode
    from t3track.host import probe as probe_mod
    from t3track.host.tree import current_executable

    out = ctx.obj.out
    timeout = probe_mod.DEFAULT_TIMEOUT_S
    if executable is None:  # only then is the config needed
        config = ctx.obj.config()
        executable = current_executable(config)
        timeout = config.gates.probe_timeout.total_seconds()
    result = probe_mod.pairing_probe(url, base_dir, executable, timeout=timeout,
                                     run_as=probe_mod.base_dir_owner(base_dir))
    if out.as_json:
        out.json(result)
    else:
        for step in result.steps:
            status = f" {step.status}" if step.status is not None else ""
            out.line(f"  {'ok  ' if step.ok else 'FAIL'} {step.name:<9}{status}  {step.detail}")
        if result.ok:
            out.line(f"pairing probe passed: {result.detail}")
    if result.ok:
        return int(ExitCode.OK)
    status = f" (HTTP {result.status})" if result.status is not None else ""
    out.error(f"pairing probe failed at step {result.step}{status}: {result.detail}")
    return int(ExitCode.REFUSED)


@config_app.command("check")
@command()
def config_check(ctx: typer.Context, json_flag: JsonOpt = False) -> int:
    """Validate the config and the host (paths, npm, users); every problem listed, exit 2 if any."""
    from t3track.commands.config_check import config_check as check
    from t3track.config import config_path
    from t3track.errors import ExitCode

    out = ctx.obj.out
    # file problems raise ConfigError with every path listed
    report = check(ctx.obj.config(), config_path(ctx.obj.config_file))
    if out.as_json:
        out.json(report)
    else:
        out.line(f"{report.config}: config is valid")
        for problem in report.problems:
            out.line(f"  - {problem}")
        for warning in report.warnings:
            out.line(f"  ! warning: {warning}")
        out.line("host: ok" if report.ok else f"host: {len(report.problems)} problem(s)")
    return int(ExitCode.OK if report.ok else ExitCode.USAGE)


@config_app.command("show")
@command()
def config_show(ctx: typer.Context, json_flag: JsonOpt = False) -> int:
    """The effective config, every default filled in (notification URLs shown as their scheme only)."""
    import yaml

    from t3track.commands.config_check import effective_config

    out = ctx.obj.out
    document = effective_config(ctx.obj.config())
    if out.as_json:
        out.json(document)
    else:
        out.line(yaml.safe_dump(document, sort_keys=False, default_flow_style=False).rstrip())
    return 0
