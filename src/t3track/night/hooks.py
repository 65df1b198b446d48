"""The operator's commands around a night's swap (config `hooks`): tell users on the team chat, drain a
proxy, snapshot a VM. Argv lists, no shell, run through t3track.runner (own process group, timeout).

`pre_swap` runs after the gates and before any server stops: a non-zero exit or a timeout stops the
move with nothing touched (not the candidate's fault: not counted, not denied). `post_swap` and
`post_rollback` are best effort. Every run is a `hook` line in history, like a notification.

A template naming {user}, {port} or {base_dir} runs once per user of the move (config order; a
pre_swap stops at the first failure); any other once. {from} {to} {ring} {users} are the move's,
and the same data goes as one JSON document on stdin.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from t3track import runner
from t3track.config import SERVICE_PLACEHOLDERS, Config
from t3track.errors import T3TrackError
from t3track.host.services import fill, service_argv
from t3track.night.report import NightReport
from t3track.redact import redact
from t3track.results import Outcome
from t3track.state import StateStore

PRE_SWAP, POST_SWAP, POST_ROLLBACK = "pre_swap", "post_swap", "post_rollback"


@dataclass(frozen=True)
class HookRun:
    hook: str
    ok: bool
    detail: str


def _data(config: Config, hook: str, *, from_version: str | None, to_version: str, run_id: str) -> dict[str, Any]:
    return {"hook": hook, "from": from_version, "to": to_version, "ring": config.ring if config.ringed else None,
            "users": [u.name for u in config.users], "run_id": run_id}


def _fill(template: list[str], data: dict[str, Any]) -> list[str]:
    return fill(template, {"from": data["from"] or "", "to": data["to"], "ring": data["ring"] or "",
                           "users": ",".join(data["users"])})


def _argvs(config: Config, template: list[str], data: dict[str, Any]) -> list[list[str]]:
    if any("{" + name + "}" in part for part in template for name in SERVICE_PLACEHOLDERS):
        return [service_argv(_fill(template, data), user) for user in config.users]
    return [_fill(template, data)]


def run_hook(config: Config, store: StateStore, hook: str, *, from_version: str | None, to_version: str,
             run_id: str) -> HookRun | None:
    """Run `hook` if configured; its result (None: none configured) is recorded in history."""
    template = getattr(config.hooks, hook)
    if not template:
        return None
    data = _data(config, hook, from_version=from_version, to_version=to_version, run_id=run_id)
    timeout = config.hooks.timeout.total_seconds()
    outcome = HookRun(hook, True, "")
    for argv in _argvs(config, template, data):
        try:
            result = runner.run(argv, timeout=timeout, stdin=json.dumps(data) + "\n")
        except T3TrackError as exc:  # not installed, not executable
            outcome = HookRun(hook, False, redact(exc.message))
            break
        if not result.ok:
            outcome = HookRun(hook, False, redact(result.describe()))
            break
        outcome = HookRun(hook, True, f"`{Path(argv[0]).name} …` exited 0")  # the name only, as runner.describe
    try:
        store.host.record("hook", by="t3track", run_id=run_id, hook=hook, ok=outcome.ok, detail=outcome.detail,
                          **({"ring": data["ring"]} if data["ring"] else {}))
    except OSError:
        pass
    return outcome


def after_move(config: Config, store: StateStore, report: NightReport, *, from_version: str | None,
               to_version: str) -> NightReport:
    """post_swap after a verified swap, post_rollback after a rollback: best effort, a failure is a note.
    {from} {to} are the move's: after a rollback, {from} serves again and {to} is what failed."""
    hook = POST_SWAP if report.outcome is Outcome.SWAPPED else POST_ROLLBACK if report.outcome is Outcome.ROLLED_BACK \
        else None
    if hook is None:
        return report
    ran = run_hook(config, store, hook, from_version=from_version, to_version=to_version, run_id=report.run_id)
    if ran is not None and not ran.ok:
        report.notes.append(f"the {hook} hook failed (best effort, the night stands): {ran.detail}")
    return report
