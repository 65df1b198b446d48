"""The night: lock -> recover -> resolve -> install -> gates -> swap -> verify, then record once.

`_pipeline` is the whole order on one screen, `_move` one ring's move (the whole host's without rings),
`_ringed` the order of a host with rings (re-check the soaking rings, then move at most one). Each step
lives in its own module (policy, host.install, gates, swap with verify, recovery, rings), and the
bookkeeping in `ledger`. The run is recorded (state,
history, evidence, metrics, notifications) exactly once, after the pipeline returns, whatever the outcome.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field, replace

from t3track import stops
from t3track.aftermath import evidence
from t3track.clock import iso, utcnow
from t3track.config import Config
from t3track.errors import EnvironmentFault, Interrupted
from t3track.host import install, sandbox
from t3track.host.install import IntegrityError
from t3track.host.registry import RegistryClient
from t3track.host.tree import current_link, executable_of, prefix_of, user_version
from t3track.night import approval, drift, gates, holds, hooks, ledger, policy, recovery, rings, swap
from t3track.night.report import NightReport
from t3track.results import FAIL, HOST_GATES, INCONCLUSIVE, GateResult, Outcome, first_failure, new_run_id
from t3track.state import Pending, StateStore, operator_name

Progress = Callable[[str], None]

__all__ = ["Approve", "ExactTarget", "NightReport", "run_night"]
OPERATOR_SOURCES = ("pin", "exact")  # an operator's own candidate: never held by a window or the approval step


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class ExactTarget:
    """`run --to VERSION [--allow-downgrade]`: this version instead of the channel's (a fleet rollout)."""

    version: str
    allow_downgrade: bool = False


@dataclass(frozen=True)
class Approve:
    """`approve [VERSION] [--ring R]`: swap the candidate a night left pending (when.approval: manual)."""

    version: str | None = None
    ring: str | None = None


@dataclass
class Night:
    """What every step of one night shares."""

    config: Config
    store: StateStore
    client: RegistryClient
    dry_run: bool
    progress: Progress
    target: ExactTarget | None = None
    ignore_busy: bool = False  # --ignore-busy: stop users' servers even while their agents work
    run_id: str = field(default_factory=new_run_id)
    recovered: recovery.Recovery | None = None
    approved: Pending | None = None  # `approve`: the pending candidate this move swaps

    @property
    def evidence(self) -> str:
        return str(evidence.evidence_dir(self.store, self.run_id))

    def scoped(self, ring: str) -> Night:
        """This night seen by one ring's move: its users, its link, its state (night.rings.scope)."""
        config, store = rings.scope(self.config, self.store, ring)
        return replace(self, config=config, store=store)

    def tag(self, report: NightReport) -> NightReport:
        """The report names the ring it moved (on a host with rings)."""
        report.ring = self.ring_key
        return report

    @property
    def ring_key(self) -> str | None:
        """The ring this move moves (None: the whole host, or a host without rings)."""
        return self.config.ring if self.config.ringed else None


def run_night(config: Config, store: StateStore, *, dry_run: bool = False, progress: Progress = _quiet,
              client: RegistryClient | None = None, target: ExactTarget | None = None,
              ignore_busy: bool = False, by: str = "t3track", approve: Approve | None = None) -> NightReport:
    """`by`: who moved: t3track (the timer's night), or the operator who named a `target` (his history
    line; the refusal streak the alerts read counts only t3track's own nights). `approve`: an operator's
    `t3track approve` of a candidate a night left pending."""
    with store.lock(), ExitStack() as closing:
        if client is None:
            client = closing.enter_context(RegistryClient.for_config(config))
        night = Night(config, store, client, dry_run, progress, target, ignore_busy)
        if approve is not None:  # before the evidence dir: a usage error leaves nothing behind
            approval.choose(config, store.load(), approve.version, approve.ring)
        evidence.ensure_evidence_dir(store, night.run_id)
        night.progress = evidence.teed_progress(store, night.run_id, progress)  # run.log, redacted
        try:
            report = _pipeline(night, approve)
        except KeyboardInterrupt:  # a stop signal outside the swap: nothing live was touched
            report = NightReport.environment_error(night.run_id, Interrupted(
                f"stopped by {stops.requested() or 'an interrupt'} before any server was stopped; every sandbox "
                "was removed, nothing changed", hint="run `t3track run` again when you mean it"),
                current=store.load().current, evidence=night.evidence, dry_run=dry_run)
        if night.recovered is not None:
            report.recovered = night.recovered.describe()
            if night.recovered.action == "rolled_back" and report.outcome is Outcome.NOOP and not dry_run:
                # a swap a killed run left was undone tonight: that is the night's news, not "nothing to do"
                report.reason = f"{report.recovered}: {night.recovered.reason}; then: {report.reason}"
                report.outcome = Outcome.ROLLED_BACK
        report.requested = target.version if target else night.approved.version if night.approved else None
        with stops.shielded():  # the night is recorded whatever signal comes now
            _record(config, store, report, dry_run, by if approve is None else operator_name(),
                    event="approve" if approve is not None else None)
        return report


def _record(config: Config, store: StateStore, report: NightReport, dry_run: bool, by: str,
            event: str | None = None) -> None:
    ledger.record_run(config, store, report, event=event or ("dry-run" if dry_run else "run"), by=by, last_run=True,
                      details={
        "candidate": report.candidate, "from": report.from_version, "to": report.to_version,
        "evidence": report.evidence, **({"requested": report.requested} if report.requested else {}),
        **({"ring": report.ring} if report.ring else {}),
        **({"held": [f"{h.user}:{h.reason}" for h in report.held]} if report.held else {}),
        **({"held_by": report.held_by} if report.held_by else {}),
        **({"protocol": protocols} if (protocols := {g.user: g.protocol for g in report.gates
                                                     if g.protocol is not None}) else {}),
        "gates": [f"{g.name}:{g.user}:{g.outcome}" for g in report.gates]})


def _pipeline(n: Night, approve: Approve | None = None) -> NightReport:
    recovery.require_state(n.config, n.store)  # before anything is recorded: a record would create it
    _sweep(n)
    n.recovered = None if n.dry_run else recovery.recover(n.config, n.store, n.progress)
    if n.recovered is not None and n.recovered.critical:
        # the servers may be down: say so loudly (exit 4) instead of a quiet frozen no-op
        return NightReport.critical(n.run_id, n.recovered.reason, current=n.recovered.result.from_version
                                    if n.recovered.result else None)
    if n.store.load().current is None and not os.path.lexists(current_link(n.config)):
        # a new host between install and the operator's first `adopt`: a night here would install a
        # nightly and refuse it for want of a backup of state nobody has made yet
        return NightReport.nothing_to_do(
            n.run_id, "t3track does not manage this host yet: nothing was installed; run `t3track adopt "
            "VERSION` (the first install; it starts and checks every user's server)", current=None, notes=[],
            dry_run=n.dry_run)
    if not n.dry_run:
        rings.ensure(n.config, n.store, n.progress)  # a host on the single link gains its per-user links
        for gone in approval.prune(n.config, n.store):
            n.progress(gone)
    if approve is not None:
        return _approve(n, approve)
    if not n.config.ringed:
        return _move(n)
    if n.target is not None:  # a fleet's `run --to`: the host's first ring; the others follow by soak
        return _move(n.scoped(n.config.first_ring))
    return _ringed(n)


def _approve(n: Night, approve: Approve) -> NightReport:
    """The pending candidate, swapped like `run --to` in its ring: its gates again first when they are stale."""
    pending = approval.choose(n.config, n.store.load(), approve.version, approve.ring)
    moving = n.scoped(pending.ring) if pending.ring is not None else n
    moving.target, moving.approved = ExactTarget(pending.version), pending
    return _move(moving)


def _sweep(n: Night) -> None:
    for name in sandbox.sweep_stale(n.config.state_dir / "sandboxes", tuple(u.name for u in n.config.users)):
        n.progress(f"removed a sandbox left by a killed run: {name}")


def _ringed(n: Night) -> NightReport:
    """Re-check the rings a version soaks in, then move at most one ring: the last one that can."""
    checked: list[GateResult] = []
    host = n.store.load()
    for ring in rings.soaking(n.config, host):
        soaking = n.scoped(ring)
        current = soaking.store.load().current
        drifted = _drift(soaking, current)
        if drifted:  # a foreign server, not the version's fault: told, nothing rolled back or denied
            return soaking.tag(NightReport.refused(n.run_id, f"drift: {drifted[0].detail}", candidate=None,
                                                   current=current, gates=[*checked, *drifted], dry_run=n.dry_run))
        results = rings.recheck(soaking.config, soaking.store, n.progress, dry_run=n.dry_run)
        checked += results
        if first_failure(results):
            return _roll_back_ring(soaking, results)
    notes: list[str] = []
    host_pin = host.pinned  # a later ring takes the host's pin once it has soaked before it
    for later in reversed(n.config.ring_configs()[1:]):
        moving = n.scoped(later.name)
        state = moving.store.load()
        promote = rings.promotion(n.config, state, later, utcnow(), only=host_pin.version if host_pin else None)
        try:
            decision = _resolve(moving, state, promote=promote)
        except EnvironmentFault as exc:
            return moving.tag(NightReport.environment_error(n.run_id, exc, current=state.current,
                                                            evidence=n.evidence, dry_run=n.dry_run))
        waiting = _already_pending(moving, decision)
        if waiting is not None:  # the ring's move waits for the operator: the rings before it may still move
            notes.append(f"ring {later.name}: {approval.reason_for(waiting)}")
            continue
        if decision.candidate is not None:
            return _with(_move(moving, decision), checked, notes)
        notes.append(f"ring {later.name}: {decision.reason}")
    return _with(_move(n.scoped(n.config.first_ring)), checked, notes)


def _with(report: NightReport, checked: list[GateResult], notes: list[str]) -> NightReport:
    report.gates[:0] = checked
    report.notes[:0] = notes
    return report


def _move(n: Night, decision: policy.Decision | None = None) -> NightReport:
    """One ring's move (the whole host's without rings): resolve -> install -> gates -> swap -> verify."""
    state = n.store.load()
    current = state.current
    notes: list[str] = []
    try:
        wanted = n.target.version if n.target else n.config.channel
        if decision is None:
            n.progress(f"resolving {n.config.package}@{wanted} (current {current or 'none'})")
            decision = _resolve(n, state)
        if decision.candidate is None:
            report = _no_candidate(n, decision, current)
            report.gates = _drift(n, current, INCONCLUSIVE)  # nothing to move, but drift is still told
            report.notes += [g.detail for g in report.gates]
            return n.tag(report) if n.approved else report
        waiting = _already_pending(n, decision)
        if waiting is not None:  # rehearsed and waiting for the operator: not rehearsed again every night
            return n.tag(NightReport.held_back(n.run_id, approval.reason_for(waiting), "approval",
                                               candidate=waiting.version, current=current, gates=[],
                                               notes=decision.notes, evidence=waiting.evidence))
        candidate, notes = decision.candidate.version, decision.notes
        operator = decision.candidate.source in OPERATOR_SOURCES and n.approved is None
        install_s = _install(n, decision.candidate, current)
        drifted = _drift(n, current)
        if drifted:  # the host's problem, said before any gate: a swap would act around a foreign server
            return n.tag(NightReport.refused(n.run_id, f"drift: {drifted[0].detail}", candidate=candidate,
                                             current=current, gates=drifted, notes=notes, evidence=n.evidence,
                                             dry_run=n.dry_run))
        if n.approved is not None:
            notes.append(approval.age_note(n.approved, n.config, utcnow()))
        if n.approved is not None and approval.fresh(n.approved, n.config, utcnow()):
            results = []
        else:
            results = gates.run_gates(n.config, candidate, executable_of(n.config, candidate),
                                      evidence_dir=evidence.evidence_dir(n.store, n.run_id), progress=n.progress)
    except IntegrityError as exc:
        ledger.count_failure(n.config, n.store, exc.version, "install", exc.message, None, dry_run=n.dry_run)
        return n.tag(NightReport.refused(n.run_id, exc.message, candidate=exc.version, current=current,
                                         notes=notes, dry_run=n.dry_run))
    except EnvironmentFault as exc:  # registry down, npm failed, disk full: nothing was swapped
        return n.tag(NightReport.environment_error(n.run_id, exc, current=current, evidence=n.evidence,
                                                   dry_run=n.dry_run))
    report = _swap(n, candidate, current, results, notes, operator=operator)
    report.timings["install_s"] = install_s
    return report


def _swap(n: Night, candidate: str, current: str | None, results: list[GateResult], notes: list[str], *,
          operator: bool = False) -> NightReport:
    failed = first_failure(results)
    if failed:
        if failed.name not in HOST_GATES:  # a missing backup is the host's fault, not the candidate's
            ledger.count_failure(n.config, n.store, candidate, failed.name, failed.detail, n.evidence,
                                 dry_run=n.dry_run)
            if n.approved is not None and not n.dry_run:  # its gates no longer pass: nothing left to approve
                approval.drop(n.store, n.ring_key)
        return n.tag(NightReport.refused(n.run_id, f"gate {failed.name} failed for {failed.user}: {failed.detail}",
                                         candidate=candidate, current=current, gates=results, notes=notes,
                                         evidence=n.evidence, dry_run=n.dry_run))
    held = None if operator or n.approved is not None else holds.hold(
        n.config, n.store, ring=n.ring_key, candidate=candidate, current=current, gates=results, notes=notes,
        run_id=n.run_id, evidence=n.evidence, dry_run=n.dry_run, now=utcnow())
    if n.dry_run:
        report = NightReport.would_swap(n.run_id, candidate=candidate, current=current, gates=results, notes=notes,
                                        evidence=n.evidence)
        if held is not None:
            report.notes.append(f"`t3track run` would not swap tonight: {held.reason}")
        return n.tag(report)
    if held is not None:
        return n.tag(held)
    hook = hooks.run_hook(n.config, n.store, hooks.PRE_SWAP, from_version=current, to_version=candidate,
                          run_id=n.run_id)
    if hook is not None and not hook.ok:
        return n.tag(NightReport.hook_failed(
            n.run_id, f"the pre_swap hook stopped the move, nothing was stopped: {hook.detail}; {candidate} stays "
            "eligible (not counted against it)", candidate=candidate, current=current, gates=results, notes=notes,
            evidence=n.evidence))
    plan = swap.plan_swap(n.store, run_id=n.run_id, from_version=current, to_version=candidate, ring=n.config.ring)
    try:
        # waits for users at work first (or holds the move); stop..start, live check, or roll back
        moved = swap.swap_and_verify(n.config, n.store, plan, n.progress, ignore_busy=n.ignore_busy)
    except EnvironmentFault as exc:  # refused before anything stopped: a user's tree, a full disk
        return n.tag(NightReport.environment_error(n.run_id, exc, current=current, evidence=n.evidence,
                                                   dry_run=n.dry_run))
    if n.approved is not None:  # approved and swapped, or tried live and rolled back: settled either way
        approval.drop(n.store, n.ring_key)
    return hooks.after_move(n.config, n.store, n.tag(ledger.conclude(
        n.config, n.store, "swap", moved, run_id=n.run_id, gates=results, notes=notes, evidence=n.evidence)),
        from_version=current, to_version=candidate)


def _already_pending(n: Night, decision: policy.Decision) -> Pending | None:
    """The ring's pending candidate, when it is what tonight's night would rehearse again."""
    if n.approved is not None or n.dry_run or decision.candidate is None or n.config.when.approval != "manual" \
            or decision.candidate.source in OPERATOR_SOURCES:
        return None
    pending = n.store.host.load().pending_for(n.ring_key)
    return pending if pending is not None and pending.version == decision.candidate.version else None


def _roll_back_ring(n: Night, checked: list[GateResult]) -> NightReport:
    """A ring's live re-check failed while its version soaked: back to the ring's previous version
    (its servers stop, are snapshotted, start on it, verified), and the version is denied for every ring.
    The databases are not restored: users wrote to them since the swap (`revert --ring --restore-state`)."""
    failed = first_failure(checked)
    assert failed is not None
    state = n.store.load()
    current, previous = state.current, state.previous
    reason = f"ring {n.config.ring}: the live re-check of {current} failed for {failed.user}: {failed.detail}"
    if n.dry_run:
        return n.tag(NightReport.refused(n.run_id, f"{reason}; `t3track run` would roll the ring back to "
                                         f"{previous or '(nothing)'}", candidate=current, current=current,
                                         gates=checked, dry_run=True))
    assert current is not None
    if previous is None or not prefix_of(n.config, previous).is_dir():
        ledger.deny_failed_live(n.store, current, rings.LIVE_RECHECK, reason, n.evidence)
        return n.tag(NightReport.critical(n.run_id, f"{reason}; there is no installed previous version to roll "
                                          "the ring back to", candidate=current, current=current, gates=checked))
    notes = swap.migrated_forward_all(n.config, state, previous)
    plan = swap.plan_swap(n.store, run_id=n.run_id, from_version=current, to_version=previous, kind="recheck",
                          ring=n.config.ring)
    try:
        # a version that failed live goes at once: a user at work on it is not waited for
        moved = swap.swap_and_verify(n.config, n.store, plan, n.progress, ignore_busy=True)
    except EnvironmentFault as exc:  # nothing stopped; the version failed live all the same
        ledger.deny_failed_live(n.store, current, rings.LIVE_RECHECK, reason, n.evidence)
        return n.tag(NightReport.environment_error(n.run_id, exc, current=current, evidence=n.evidence))
    moved.reason = moved.reason or reason
    return hooks.after_move(n.config, n.store, n.tag(ledger.conclude(
        n.config, n.store, "recheck", moved, run_id=n.run_id, gates=checked, notes=notes, evidence=n.evidence)),
        from_version=current, to_version=previous)


def _drift(n: Night, current: str | None, outcome: str = FAIL) -> list[GateResult]:
    started = time.monotonic()
    linked = {u.name: v for u in n.config.users if (v := user_version(n.config, u.name))} if n.config.ringed \
        else None
    found = drift.find(n.config, current, linked)
    for one in found:
        n.progress(f"drift: {one.describe()}")
    return drift.as_gates(found, started, outcome)


def _resolve(n: Night, state: policy.State, promote: rings.Promotion | None = None) -> policy.Decision:
    """The policy's decision; first-seen times and a freeze that ended are saved at once. `promote`:
    a later ring's move, which takes what the ring before it served for its soak, not the channel."""
    if promote is not None:
        decision = policy.resolve_promotion(n.config, state, n.client, promote.version, promote.reason, utcnow())
    elif n.target is None:
        decision = policy.resolve(n.config, state, n.client, utcnow())
    else:
        decision = policy.resolve_exact(n.config, state, n.client, n.target.version, utcnow(),
                                        allow_downgrade=n.target.allow_downgrade)
    n.store.save(state)
    if decision.freeze_ended is not None:
        ended = decision.freeze_ended
        n.store.record("unfreeze", by="t3track", reason=f"freeze expired at {iso(ended.until) if ended.until else '?'}",
                       frozen_reason=ended.reason, automatic=True)
    return decision


def _no_candidate(n: Night, decision: policy.Decision, current: str | None) -> NightReport:
    if decision.action == "refused":  # e.g. the tag moved backwards: said every night until it moves
        return NightReport.refused(n.run_id, decision.reason, candidate=None, current=current, notes=decision.notes,
                                   dry_run=n.dry_run)
    return NightReport.nothing_to_do(n.run_id, decision.reason, current=current, notes=decision.notes,
                                     dry_run=n.dry_run)


def _install(n: Night, candidate: policy.Candidate, current: str | None) -> float:
    """Install the candidate beside the live version; returns how long it took."""
    n.progress(f"installing {n.config.package}@{candidate.version} beside {current or 'nothing'}")
    started = time.monotonic()
    install.ensure_installed(n.config, candidate.version, candidate.dist, registry_url=n.client.base_url, client=n.client,
                             progress=n.progress)
    return time.monotonic() - started
