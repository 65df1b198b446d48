"""Recovery: a journal left by a killed run is finished or rolled back before anything else happens."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from t3track.config import Config
from t3track.errors import CriticalError, StateError
from t3track.host.tree import current_link, current_version
from t3track.night import journal as jr
from t3track.night import ledger, rings
from t3track.night.journal import Phase, RollbackCause
from t3track.night.report import CRITICAL_NOTE
from t3track.night.swap import SwapResult, drive, rollback
from t3track.state import StateStore

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass
class Recovery:
    run_id: str
    kind: str
    phase: str
    action: str          # finished | rolled_back | critical | cleared
    result: SwapResult | None
    rollback_was_for_failure: bool = False  # a nightly candidate failed a live check: deny it

    @property
    def critical(self) -> bool:
        return self.action == "critical"

    @property
    def reason(self) -> str:
        return self.result.reason if self.result else "recovery failed"

    def describe(self) -> str:
        return f"{self.action} an interrupted run {self.run_id} (phase {self.phase})"


def recover(config: Config, store: StateStore, progress: Progress = _quiet) -> Recovery | None:
    """Finish or undo the swap a killed run left, and settle its bookkeeping; None when there is none.

    A run killed after the flip may have left the candidate serving users for hours: it is checked
    live first and kept when it passes, so nothing users wrote since is undone."""
    journal = jr.read(store)
    if journal is None:
        return None
    config, store = rings.scope(config, store, journal.ring)  # a ring's move: that ring's users and state
    recovered = _recover(config, store, journal, progress)
    _record(config, store, recovered)
    return recovered


def require_state(config: Config, store: StateStore) -> None:
    """A host whose `root/current` link exists is managed: without its state.json (lost, or moved aside
    as a corrupt one), t3track must not act as on a first install (a nightly failing live would have
    nothing to roll back to, night after night). Raises StateError (exit 4) naming the way back."""
    if store.state_path.exists() or store.journal_path.exists() or not os.path.lexists(current_link(config)):
        return  # a journal: a killed first move (adopt) that recovery settles, state.json included
    linked = current_version(config) or "?"
    raise StateError(
        f"{store.state_path} is missing, but {current_link(config)} points at {linked}: this host is managed, "
        f"and without its state t3track will not move any version", hint=f"restore state.json from a copy "
        f"if you have one; otherwise take the host over again with `t3track adopt {linked}` (it restarts each server on it and checks it live)")


def recover_or_refuse(config: Config, store: StateStore, progress: Progress) -> Recovery | None:
    """For operator moves (revert, adopt): finish or undo a killed run first; refuse if that fails."""
    recovered = recover(config, store, progress)
    if recovered is not None and recovered.critical:
        raise CriticalError(f"an interrupted {recovered.kind} could not be recovered: {recovered.reason}",
                            hint=CRITICAL_NOTE)
    return recovered


def _recover(config: Config, store: StateStore, journal: jr.Journal, progress: Progress) -> Recovery:
    phase = journal.phase.value

    def done(action: str, result: SwapResult | None, for_failure: bool = False) -> Recovery:
        return Recovery(journal.run_id, journal.kind, phase, action, result, for_failure)

    progress(f"recovering an interrupted {journal.kind} ({journal.from_version} -> {journal.to_version}, phase {phase})")
    if journal.phase is Phase.PLANNED:
        jr.remove(store)  # nothing was touched yet
        return done("cleared", None)
    if journal.phase is Phase.VERIFIED:
        return done("finished", SwapResult("swapped", journal.from_version, journal.to_version))
    # only a nightly candidate is denied for failing live; a revert's or adopt's target is the operator's call
    nightly = journal.kind == "swap"
    # a ring's rollback after a failed re-check (kind recheck) only ever goes on: what it left failed live
    forward = (journal.phase in (Phase.FLIPPED, Phase.STARTED)
               or (journal.kind == "recheck" and journal.phase is not Phase.ROLLING_BACK)) \
        and not journal.simulate_live_failure
    if forward or (journal.from_version is None and journal.phase is not Phase.ROLLING_BACK):
        # (a first install has nothing to roll back to either) start what is not running, check live,
        # and roll back only if that check fails
        result = drive(config, store, journal, progress)
        if result.outcome == "swapped":
            return done("finished", result)
        return done("rolled_back" if result.outcome == "rolled_back" else "critical", result,
                    for_failure=nightly and any(g.failed for g in result.live))
    for_failure = nightly and journal.rollback_cause is RollbackCause.LIVE_CHECK
    result = rollback(config, store, journal, journal.rollback_cause or RollbackCause.STEP,
                      journal.rollback_reason or f"interrupted during phase {phase}", progress, recovering=True)
    return done("rolled_back" if result.outcome == "rolled_back" else "critical", result, for_failure)


def _record(config: Config, store: StateStore, recovered: Recovery) -> None:
    store.record("recover", by="t3track", run_id=recovered.run_id, kind=recovered.kind, phase=recovered.phase,
                 action=recovered.action, reason=recovered.result.reason if recovered.result else None)
    result = recovered.result
    if recovered.action == "finished" and result:
        ledger.settle(config, store, recovered.kind, result.from_version, result.to_version, recovered.run_id)
    elif recovered.action == "rolled_back":
        ledger.settle_rollback(store, recovered.kind, result.from_version if result else None)
        if recovered.kind == "recheck" and result and result.from_version:  # back on the failing version
            ledger.deny_failed_live(store, result.from_version, ledger.RECHECK_GATE, "failed its live re-check; "
                                    "going back to the previous version failed too", None)
        if recovered.rollback_was_for_failure and result:
            ledger.deny_failed_live(store, result.to_version, "live-verify", result.reason, None)
