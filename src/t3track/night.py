"""The night: lock -> recover -> resolve -> install -> gates -> swap -> verify -> record.

`run_night` reads top to bottom like the product spec; each step lives in its own module.
"""

from __future__ import annotations

import os
import secrets
import shutil
from contextlib import ExitStack
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from t3track import afterrun, evidence, gates as gates_mod, install, journal, ops, policy, sandbox, swap
from t3track.config import Config
from t3track.errors import CriticalError, EnvironmentFault, ExitCode
from t3track.install import IntegrityError
from t3track.fingerprints import HOST_GATES
from t3track.gates import GateResult
from t3track.registry import RegistryClient
from t3track.state import Denial, LastRun, State, StateStore, utcnow

Progress = Callable[[str], None]


@dataclass
class NightReport:
    outcome: str                     # swapped | noop | refused | rolled_back | error | critical
    exit_code: ExitCode
    run_id: str
    reason: str
    candidate: str | None = None
    from_version: str | None = None
    to_version: str | None = None
    gates: list[GateResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    recovered: str | None = None
    evidence: str | None = None
    dry_run: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome, "exit_code": int(self.exit_code), "run_id": self.run_id,
            "candidate": self.candidate, "from": self.from_version, "to": self.to_version,
            "reason": self.reason, "dry_run": self.dry_run, "recovered": self.recovered,
            "evidence": self.evidence, "notes": self.notes,
            "gates": [{"name": g.name, "user": g.user, "outcome": g.outcome,
                       "duration_s": round(g.duration_s, 3), "detail": g.detail} for g in self.gates],
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }


def new_run_id() -> str:
    return utcnow().strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def run_night(config: Config, store: StateStore, *, dry_run: bool = False, progress: Progress = lambda _: None,
              client: RegistryClient | None = None) -> NightReport:
    with store.lock(), ExitStack() as closing:
        if client is None:
            client = closing.enter_context(RegistryClient.for_config(config))
        return _night(config, store, client, dry_run, progress)


def _night(config: Config, store: StateStore, client: RegistryClient, dry_run: bool, progress: Progress) -> NightReport:
    run_id = new_run_id()
    evidence_dir = evidence.ensure_evidence_dir(store, run_id)
    progress = evidence.teed_progress(store, run_id, progress)  # run.log in the evidence, redacted
    for name in sandbox.sweep_stale(config.state_dir / "sandboxes"):
        progress(f"removed a sandbox left by a killed run: {name}")
    recovered = None if dry_run else swap.recover(config, store, progress)
    if recovered is not None:
        _record_recovery(config, store, recovered)
        if recovered.action == "critical":
            # the servers may be down: say so loudly (exit 4) instead of a quiet frozen no-op
            report = NightReport("critical", ExitCode.CRITICAL, run_id, recovered.result.reason
                                 if recovered.result else "recovery failed", from_version=recovered.result.from_version
                                 if recovered.result else None, notes=[CRITICAL_NOTE])
            return _finish(config, store, report, recovered)
    state = store.load()
    ops.lift_expired_freeze(store, state)
    current = state.current
    if current is None and not os.path.lexists(config.root / "current"):
        # a new host between install and the operator's first `adopt`: a night here would install a
        # nightly and refuse it for want of a backup of state nobody has made yet
        report = NightReport("noop", ExitCode.OK, run_id,
                             "t3track does not manage this host yet: nothing was installed; run "
                             "`t3track adopt VERSION` (the first install; it starts and checks every user's server)",
                             dry_run=dry_run)
        return _finish(config, store, report, recovered)
    try:
        progress(f"resolving {config.package}@{config.channel} (current {current or 'none'})")
        decision = policy.resolve(config, state, client, utcnow())
        store.save(state)  # first-seen times
        if decision.action != "candidate":
            outcome = "refused" if decision.action == "refused" else "noop"
            report = NightReport(outcome, ExitCode.REFUSED if outcome == "refused" else ExitCode.OK, run_id,
                                 decision.reason, from_version=current, notes=decision.notes, dry_run=dry_run)
            return _finish(config, store, report, recovered)
        candidate = decision.candidate.version

        progress(f"installing {config.package}@{candidate} beside {current or 'nothing'}")
        started = time.monotonic()
        try:
            dist = decision.candidate.dist or client.packument(config.package).versions[candidate]
            install.ensure_installed(config, candidate, dist, registry_url=client.base_url, client=client,
                                     progress=progress)
        except IntegrityError as exc:
            _count_failure(config, store, state, candidate, "install", exc.message, None, dry_run)
            report = NightReport("refused", ExitCode.REFUSED, run_id, exc.message, candidate, current,
                                 notes=decision.notes, dry_run=dry_run)
            return _finish(config, store, report, recovered)
        install_s = time.monotonic() - started

        results = gates_mod.run_gates(config, candidate, swap.executable_of(config, candidate),
                                      evidence_dir=evidence_dir, progress=progress)
    except EnvironmentFault as exc:
        # registry down, npm failed, disk full: nothing was swapped; recorded so the operator hears of it
        report = NightReport("error", ExitCode.ENVIRONMENT, run_id,
                             exc.message + (f"; next: {exc.hint}" if exc.hint else ""), from_version=current,
                             dry_run=dry_run, evidence=str(evidence_dir))
        return _finish(config, store, report, recovered)
    failed = next((g for g in results if g.failed), None)  # inconclusive (sessions-survive) informs, never blocks
    if failed:
        if failed.name not in HOST_GATES:  # a missing backup is the host's fault, not the candidate's
            _count_failure(config, store, state, candidate, failed.name, failed.detail, str(evidence_dir), dry_run)
        report = NightReport("refused", ExitCode.REFUSED, run_id,
                             f"gate {failed.name} failed for {failed.user}: {failed.detail}", candidate, current,
                             gates=results, notes=decision.notes, evidence=str(evidence_dir), dry_run=dry_run)
        return _finish(config, store, report, recovered)
    if dry_run:
        report = NightReport("noop", ExitCode.OK, run_id,
                             f"every gate passed: `t3track run` would swap {current or 'nothing'} -> {candidate}",
                             candidate, current, candidate, gates=results, notes=decision.notes,
                             evidence=str(evidence_dir), dry_run=True)
        return _finish(config, store, report, recovered)

    result = swap.swap_to(config, store, run_id=run_id, from_version=current, to_version=candidate,
                          progress=progress)
    report = _after_swap(config, store, result, run_id, candidate, results, evidence_dir)
    report.notes = decision.notes
    report.timings.update(result.timings, install_s=install_s)
    return _finish(config, store, report, recovered)


CRITICAL_NOTE = ("t3track froze itself and kept its journal (state_dir/journal.json): the next `t3track run` "
                 "tries the rollback again. To fix it by hand, see runbooks/t3-version-bump.md (manual rollback), "
                 "then move the journal aside and `t3track unfreeze`")


def _count_failure(config: Config, store: StateStore, state: State, version: str, gate: str, reason: str,
                   evidence_path: str | None, dry_run: bool) -> None:
    """A gate failure counts toward denying `version` (after gates.max_failures); a dry run counts nothing."""
    if dry_run:
        return
    policy.record_failure(state, version, gate, reason, evidence_path, config.gates.max_failures)
    store.save(state)


def _after_swap(config: Config, store: StateStore, result: swap.SwapResult, run_id: str, candidate: str,
                gate_results: list[GateResult], evidence_dir: Path) -> NightReport:
    live = gate_results + result.live + result.rollback_live
    if result.outcome == "swapped":
        settle(config, store, "swap", result.from_version, candidate, run_id)
        return NightReport("swapped", ExitCode.OK, run_id, f"swapped {result.from_version} -> {candidate}",
                           candidate, result.from_version, candidate, gates=live, evidence=str(evidence_dir))
    state = store.load()
    failed = next((g for g in result.live if g.failed), None)
    if failed:
        # a candidate that failed live is denied at once: it already cost users downtime
        policy.record_failure(state, candidate, failed.name, result.reason, str(evidence_dir), 1)
        store.save(state)
    else:
        # a stop/snapshot/flip/start step failed: maybe the host's fault, so it only counts
        _count_failure(config, store, state, candidate, "swap", result.reason, str(evidence_dir), False)
    if result.outcome == "rolled_back":
        settle_rollback(store, "swap", result.from_version)
        return NightReport("rolled_back", ExitCode.REFUSED, run_id, result.reason, candidate,
                           result.from_version, result.from_version, gates=live, evidence=str(evidence_dir))
    return NightReport("critical", ExitCode.CRITICAL, run_id, result.reason, candidate, result.from_version, None,
                       gates=live, evidence=str(evidence_dir), notes=[CRITICAL_NOTE])


def settle(config: Config, store: StateStore, kind: str, from_version: str | None, to_version: str, run_id: str,
           by: str = "t3track") -> None:
    """Bookkeeping after a verified move, the same whether it finished now or in a later recovery.

    A swap or adopt keeps its pre-swap snapshots for `revert --restore-state`; a revert denies the
    version it left."""
    state = store.load()
    if kind == "revert":
        state.denied = [d for d in state.denied if d.version != from_version]
        if from_version is not None:
            state.denied.append(Denial(version=from_version, reason=f"reverted by {by}", gate="revert",
                                       at=utcnow(), by=by))
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
    state.current_snapshot = str(store.dir / "snapshots" / run_id)
    state.failures.pop(to_version, None)
    store.save(state)
    journal.remove(store)
    install.prune(config, state)
    _prune_snapshots(store, keep=state.current_snapshot)


def _prune_snapshots(store: StateStore, keep: str | None) -> None:
    base = store.dir / "snapshots"
    if not base.is_dir():
        return
    for entry in base.iterdir():
        if str(entry) != keep:
            shutil.rmtree(entry, ignore_errors=True)


def recover_or_refuse(config: Config, store: StateStore, progress: Progress) -> swap.Recovery | None:
    """For operator moves (revert, adopt): finish or undo a killed run first; refuse if that fails."""
    recovered = swap.recover(config, store, progress)
    if recovered is not None:
        _record_recovery(config, store, recovered)
        if recovered.action == "critical":
            raise CriticalError(f"an interrupted {recovered.kind} could not be recovered: "
                                f"{recovered.result.reason if recovered.result else 'unknown'}", hint=CRITICAL_NOTE)
    return recovered


def _record_recovery(config: Config, store: StateStore, recovered: swap.Recovery) -> None:
    store.record("recover", by="t3track", run_id=recovered.run_id, kind=recovered.kind, phase=recovered.phase,
                 action=recovered.action, reason=recovered.result.reason if recovered.result else None)
    result = recovered.result
    if recovered.action == "finished" and result:
        settle(config, store, recovered.kind, result.from_version, result.to_version, recovered.run_id)
    elif recovered.action == "rolled_back":
        settle_rollback(store, recovered.kind, result.from_version if result else None)
        state = store.load()
        if recovered.rollback_was_for_failure and result and state.denial(result.to_version) is None:
            # a nightly candidate failed a live check before or during the recovery: deny it now
            policy.record_failure(state, result.to_version, "live-verify", result.reason, None, 1)
            store.save(state)


def _finish(config: Config, store: StateStore, report: NightReport, recovered: swap.Recovery | None) -> NightReport:
    if recovered is not None:
        report.recovered = f"{recovered.action} an interrupted run {recovered.run_id} (phase {recovered.phase})"
    if not report.dry_run:
        state = store.load()
        state.last_run = LastRun(at=utcnow(), outcome=report.outcome, candidate=report.candidate,
                                 exit_code=int(report.exit_code), run_id=report.run_id)
        store.save(state)
    store.record("dry-run" if report.dry_run else "run", by="t3track", run_id=report.run_id,
                 outcome=report.outcome, candidate=report.candidate, **{"from": report.from_version},
                 to=report.to_version, reason=report.reason, exit_code=int(report.exit_code),
                 evidence=report.evidence,
                 gates=[f"{g.name}:{g.user}:{g.outcome}" for g in report.gates])
    afterrun.after_run(config, store, report)  # evidence, notifications, metrics: best effort
    return report
