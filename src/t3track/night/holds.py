"""What keeps a night's candidate that passed every gate from swapping tonight (issue 28, "When to move"):
the approval step (`when.approval: manual`: left pending for `t3track approve`), else a closed swap window
or a blackout day. Never the candidate's fault: a noop, nothing counted. An operator's own moves (pin,
`run --to`, approve, revert) are never held: the pipeline does not ask."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from t3track.config import Config
from t3track.night import approval, windows
from t3track.night.report import NightReport
from t3track.results import GateResult
from t3track.state import StateStore


def hold(config: Config, store: StateStore, *, ring: str | None, candidate: str, current: str | None,
         gates: list[GateResult], notes: list[str], run_id: str, evidence: str | None, dry_run: bool,
         now: datetime) -> NightReport | None:
    """The report of a held night (a dry run only says it would be: nothing is left pending), or None:
    it may swap now."""
    common: dict[str, Any] = {"candidate": candidate, "current": current, "gates": gates, "notes": notes, "evidence": evidence}
    if config.when.approval == "manual":
        if dry_run:
            return NightReport.held_back(run_id, f"{candidate} would be left pending approval", "approval", **common)
        before = store.host.load().pending_for(ring)
        pending = approval.leave_pending(config, store, ring=ring, version=candidate, current=current, run_id=run_id,
                                         evidence=evidence, gates=gates, now=now)
        return NightReport.held_back(run_id, approval.reason_for(pending, replaced=before.version if before else None),
                                     "approval", **common)
    verdict = windows.verdict(config.when, now)
    if verdict.open:
        return None
    return NightReport.held_back(
        run_id, f"every gate passed, but {verdict.reason}: {current or 'nothing'} -> {candidate} waits for it "
        f"(`t3track run --to {candidate}` swaps it now)", "blackout" if verdict.blackout else "window", **common)
