"""The bookkeeping of every move, in one place: settle a verified move or a rollback (state, journal,
pruning), count or deny a failing candidate, conclude a swap's result into its report, and record a
run once (last run, history, then the aftermath), whatever its outcome."""

from __future__ import annotations

import shutil
import time
from typing import Any

from t3track import aftermath
from t3track.clock import utcnow
from t3track.config import Config
from t3track.host import install
from t3track.host.services import downtime
from t3track.night import journal, policy
from t3track.night.report import NightReport
from t3track.night.swap import SwapResult
from t3track.results import GateResult, RunReport, first_failure
from t3track.state import Denial, LastRun, RingState, State, StateStore, note_served

REASONS = {"swap": "swapped {from_} -> {to}", "adopt": "adopted {to}", "revert": "reverted {from_} -> {to}"}
RECHECK_GATE = "live-recheck"  # night.rings.LIVE_RECHECK: a ring's version failed live while it soaked


def conclude(config: Config, store: StateStore, kind: str, result: SwapResult, *, run_id: str,
             gates: list[GateResult] | None = None, notes: list[str] | None = None, evidence: str | None = None,
             by: str = "t3track") -> NightReport:
    """A swap's result as a settled state and a report, the same for the night, adopt and revert.

    A nightly candidate (kind `swap`) that failed live is denied at once (it already cost users
    downtime); one whose stop/snapshot/flip/start step failed only counts (maybe the host's fault)."""
    checked = [*(gates or []), *result.live, *result.rollback_live]
    notes = [*(notes or []), *result.notes]
    common: dict[str, Any] = {"candidate": result.to_version, "current": result.from_version, "gates": checked,
                              "notes": notes, "evidence": evidence}
    if kind == "recheck":
        return _concluded_recheck(config, store, result, run_id, common)
    if result.outcome == "swapped":
        settle(config, store, kind, result.from_version, result.to_version, run_id, by=by)
        report = NightReport.swapped(run_id, REASONS[kind].format(from_=result.from_version, to=result.to_version),
                                     **common)
    else:
        if kind == "swap":
            failed = first_failure(result.live)
            if failed:
                deny_failed_live(store, result.to_version, failed.name, result.reason, evidence)
            elif not result.interrupted and not result.host_fault:  # a stop request, a host fault: not its failure
                count_failure(config, store, result.to_version, "swap", result.reason, evidence)
        if result.outcome == "rolled_back":
            settle_rollback(store, kind, result.from_version)
            report = NightReport.rolled_back(run_id, result.reason, **common)
        else:
            report = NightReport.critical(run_id, result.reason, **common)
    report.timings.update(result.timings)
    if result.marks:
        report.downtime_s = {user: round(seconds, 3) for user, seconds in
                             downtime(result.marks, [u.name for u in config.users], time.monotonic()).items()}
    return report


def _concluded_recheck(config: Config, store: StateStore, result: SwapResult, run_id: str,
                       common: dict[str, Any]) -> NightReport:
    """A ring rolled back because its version failed a live re-check: the version is denied for every
    ring whatever happened next. Back on the previous version is a rollback (exit 1); a previous that
    failed live too (the swap machinery put the failing version back) or a failed step is critical."""
    failing = result.from_version
    assert failing is not None
    if result.outcome == "swapped":
        settle(config, store, "recheck", failing, result.to_version, run_id, reason=result.reason)
        report = NightReport.rolled_back(run_id, f"{result.reason}; rolled back {failing} -> {result.to_version}",
                                         **common)
        report.candidate, report.to_version = failing, result.to_version
    else:
        deny_failed_live(store, failing, RECHECK_GATE, result.reason, common.get("evidence"))
        if result.outcome == "rolled_back":
            settle_rollback(store, "recheck", failing)
        report = NightReport.critical(run_id, f"{result.reason}; going back to {result.to_version} failed too, "
                                      f"so the ring serves {failing} again", **common)
    report.timings.update(result.timings)
    return report


def settle(config: Config, store: StateStore, kind: str, from_version: str | None, to_version: str, run_id: str,
           by: str = "t3track", reason: str | None = None) -> None:
    """Bookkeeping after a verified move, the same whether it finished now or in a later recovery.

    A swap or adopt keeps its pre-swap snapshots for `revert --restore-state`; a revert denies the
    version it left."""
    state = store.load()
    if kind in ("revert", "recheck"):
        state.denied = [d for d in state.denied if d.version != from_version]
        if from_version is not None:
            state.denied.append(Denial(version=from_version, at=utcnow(), by=by,
                                       **({"reason": f"reverted by {by}", "gate": "revert"} if kind == "revert" else
                                          {"reason": reason or "failed its live re-check", "gate": RECHECK_GATE})))
        state.previous, state.current, state.current_snapshot = from_version, to_version, None
        store.save(state)
        journal.remove(store)
        return
    _commit_swap(config, store, state, from_version, to_version, run_id)


def settle_rollback(store: StateStore, kind: str, from_version: str | None) -> None:
    """Bookkeeping after a completed rollback, now or in a later recovery: the journal goes, and an
    adopt's rollback leaves the host on its hand-made version, which t3track then manages (so the
    next night has something to roll back to)."""
    journal.remove(store)
    if kind == "adopt" and from_version:
        state = store.load()
        if state.current is None:
            state.current = from_version
            store.save(state)


def _commit_swap(config: Config, store: StateStore, state: State, from_version: str | None, to_version: str,
                 run_id: str) -> None:
    """Bookkeeping after a verified swap: state, then the journal goes, then old installs are pruned."""
    state.previous = from_version if from_version != to_version else state.previous
    state.current = to_version
    state.current_snapshot = str(store.snapshot_dir(run_id))
    state.failures.pop(to_version, None)
    if config.ringed and config.ring is None:  # the whole host moved (adopt): every ring is on it now
        for ring in config.ring_names():
            own = state.rings.setdefault(ring, RingState())
            if ring != config.first_ring:
                own.previous = own.current if own.current != to_version else own.previous
                own.current, own.current_snapshot = to_version, state.current_snapshot
            note_served(own, to_version, utcnow())
    store.save(state)
    journal.remove(store)
    install.prune(config.host, state, host=store.host.load())  # every ring's versions are kept
    _prune_snapshots(store, keep=state.current_snapshot)


def _prune_snapshots(store: StateStore, keep: str | None) -> None:
    base = store.snapshots_root
    if not base.is_dir():
        return
    for entry in base.iterdir():
        if str(entry) != keep:
            shutil.rmtree(entry, ignore_errors=True)


def count_failure(config: Config, store: StateStore, version: str, gate: str, reason: str,
                  evidence: str | None, *, dry_run: bool = False) -> None:
    """A gate failure counts toward denying `version` (after gates.max_failures); a dry run counts nothing."""
    if dry_run:
        return
    state = store.load()
    policy.record_failure(state, version, gate, reason, evidence, config.gates.max_failures)
    store.save(state)


def deny_failed_live(store: StateStore, version: str, gate: str, reason: str, evidence: str | None) -> None:
    """A candidate that failed a live check is denied at once (unless it already is)."""
    state = store.load()
    if state.denial(version) is None:
        policy.record_failure(state, version, gate, reason, evidence, 1)
        store.save(state)


def record_run(config: Config, store: StateStore, report: RunReport, *, event: str, by: str = "t3track",
               nightly: bool = True, last_run: bool = False, details: dict[str, Any] | None = None) -> list[str]:
    """Record a run exactly once, after it returned: last_run (the night's), one history line, then the
    aftermath (fingerprints for nightlies, notifications, evidence, metrics; best effort). Returns the
    aftermath's notes (also appended to the report's)."""
    if last_run and not report.dry_run:
        state = store.load()
        state.last_run = LastRun(at=utcnow(), outcome=report.outcome.value, candidate=report.candidate,
                                 exit_code=int(report.exit_code), run_id=report.run_id,
                                 ring=getattr(report, "ring", None))
        store.save(state)
    store.record(event, by=by, run_id=report.run_id, outcome=report.outcome.value, **(details or {}),
                 reason=report.reason, exit_code=int(report.exit_code))
    return aftermath.after_run(config, store, report, nightly=nightly)
