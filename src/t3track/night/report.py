"""The report of a run that moves versions (the night, adopt, revert): built by named constructors,
its exit code decided by its outcome (results.Outcome), rendered by the CLI, kept as evidence."""

from __future__ import annotations

from dataclasses import dataclass, field

from t3track.errors import ExitCode, T3TrackError
from t3track.results import GateResult, Outcome, json_key

CRITICAL_NOTE = ("t3track froze itself and kept its journal (state_dir/journal.json): the next `t3track run` "
                 "tries the rollback again. To fix it by hand, see runbooks/t3-version-bump.md (manual rollback), "
                 "then move the journal aside and `t3track unfreeze`")


@dataclass
class HeldUser:
    """A user the move left on the old version tonight, and why (`busy`: an agent at work)."""

    user: str
    reason: str
    threads: list[str] = field(default_factory=list)   # the threads at work
    what: list[str] = field(default_factory=list)      # e.g. "turn running", "approval or question pending"


@dataclass(kw_only=True)
class NightReport:
    outcome: Outcome
    run_id: str
    reason: str
    candidate: str | None = None
    from_version: str | None = json_key("from", default=None)
    to_version: str | None = json_key("to", default=None)
    gates: list[GateResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    recovered: str | None = None
    evidence: str | None = None
    dry_run: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    requested: str | None = None     # `run --to VERSION`: the exact version asked for
    ring: str | None = json_key("ring", omit_none=True, default=None)  # the ring it moved, on a host with rings
    downtime_s: dict[str, float] = field(default_factory=dict)  # per user, from the stop to the passing live check
    held: list[HeldUser] = field(default_factory=list)  # users left on the old version tonight (`held: busy`)
    # what held a candidate that passed its gates: window | blackout | approval (noop), pre_swap (a hook: exit 1);
    # never the candidate's fault: not counted, not denied, no refusal streak
    held_by: str | None = json_key("held_by", omit_none=True, default=None)
    json_extra = ("exit_code",)

    @property
    def exit_code(self) -> ExitCode:
        return self.outcome.exit_code

    @property
    def notify_event(self) -> str | None:
        """The notification this run calls for, if any (refused, rolled_back, critical)."""
        return self.outcome.value if self.outcome in (Outcome.REFUSED, Outcome.ROLLED_BACK, Outcome.CRITICAL) else None

    # ------------------------------------------------------------ the ways a run ends

    @classmethod
    def nothing_to_do(cls, run_id: str, reason: str, *, current: str | None, notes: list[str],
                      dry_run: bool = False) -> NightReport:
        return cls(outcome=Outcome.NOOP, run_id=run_id, reason=reason, from_version=current, notes=notes,
                   dry_run=dry_run)

    @classmethod
    def held_busy(cls, run_id: str, reason: str, *, candidate: str, current: str | None, held: list[HeldUser],
                  gates: list[GateResult], notes: list[str], evidence: str | None) -> NightReport:
        """Every gate passed, but users were still at work when the wait ended: nothing was stopped, the
        candidate stays eligible (not a refusal), the next night tries again."""
        return cls(outcome=Outcome.NOOP, run_id=run_id, reason=reason, candidate=candidate, from_version=current,
                   gates=gates, notes=notes, evidence=evidence, held=held)

    @classmethod
    def refused(cls, run_id: str, reason: str, *, candidate: str | None, current: str | None,
                gates: list[GateResult] | None = None, notes: list[str] | None = None, evidence: str | None = None,
                dry_run: bool = False) -> NightReport:
        return cls(outcome=Outcome.REFUSED, run_id=run_id, reason=reason, candidate=candidate, from_version=current,
                   gates=gates or [], notes=notes or [], evidence=evidence, dry_run=dry_run)

    @classmethod
    def environment_error(cls, run_id: str, fault: T3TrackError, *, current: str | None, evidence: str | None,
                          dry_run: bool = False) -> NightReport:
        """The environment failed (registry, npm, disk, a user's tree): the reason says what to do next."""
        reason = fault.message + (f"; next: {fault.hint}" if fault.hint else "")
        return cls(outcome=Outcome.ERROR, run_id=run_id, reason=reason, from_version=current, evidence=evidence,
                   dry_run=dry_run)

    @classmethod
    def would_swap(cls, run_id: str, *, candidate: str, current: str | None, gates: list[GateResult],
                   notes: list[str], evidence: str | None) -> NightReport:
        return cls(outcome=Outcome.NOOP, run_id=run_id,
                   reason=f"every gate passed: `t3track run` would swap {current or 'nothing'} -> {candidate}",
                   candidate=candidate, from_version=current, to_version=candidate, gates=gates, notes=notes,
                   evidence=evidence, dry_run=True)

    @classmethod
    def host_refused_start(cls, run_id: str, reason: str, refusals: list[tuple[str, str, str]], *, candidate: str,
                           current: str | None, gates: list[GateResult], notes: list[str],
                           evidence: str | None) -> NightReport:
        """A live start refused because of the host's state (a 0.1.x refusal: another owner of the T3 home,
        a user's own T3 service, an interrupted update of upstream's updater): rolled back, the old version
        serves, and the candidate is not held responsible (exit 3: the environment's)."""
        said = "; ".join(f"{user}'s server refused to start: {line} (next: {hint})" for user, line, hint in refusals)
        return cls(outcome=Outcome.ERROR, run_id=run_id, reason=f"{said}; rolled back to {current} ({reason})",
                   candidate=candidate, from_version=current, to_version=current, gates=gates, notes=notes,
                   evidence=evidence)

    @classmethod
    def held_back(cls, run_id: str, reason: str, held: str, *, candidate: str, current: str | None,
                  gates: list[GateResult], notes: list[str], evidence: str | None) -> NightReport:
        """Every gate passed, but a window, a blackout or the approval step keeps it from swapping tonight."""
        return cls(outcome=Outcome.NOOP, run_id=run_id, reason=reason, candidate=candidate, from_version=current,
                   gates=gates, notes=notes, evidence=evidence, held_by=held)

    @classmethod
    def hook_failed(cls, run_id: str, reason: str, *, candidate: str, current: str | None,
                    gates: list[GateResult], notes: list[str], evidence: str | None) -> NightReport:
        """The pre_swap hook said no: nothing was stopped (exit 1), and the candidate is not blamed."""
        return cls(outcome=Outcome.REFUSED, run_id=run_id, reason=reason, candidate=candidate, from_version=current,
                   gates=gates, notes=notes, evidence=evidence, held_by="pre_swap")

    @classmethod
    def swapped(cls, run_id: str, reason: str, *, candidate: str, current: str | None, gates: list[GateResult],
                notes: list[str], evidence: str | None) -> NightReport:
        return cls(outcome=Outcome.SWAPPED, run_id=run_id, reason=reason, candidate=candidate, from_version=current,
                   to_version=candidate, gates=gates, notes=notes, evidence=evidence)

    @classmethod
    def rolled_back(cls, run_id: str, reason: str, *, candidate: str, current: str | None,
                    gates: list[GateResult], notes: list[str], evidence: str | None) -> NightReport:
        return cls(outcome=Outcome.ROLLED_BACK, run_id=run_id, reason=reason, candidate=candidate,
                   from_version=current, to_version=current, gates=gates, notes=notes, evidence=evidence)

    @classmethod
    def critical(cls, run_id: str, reason: str, *, candidate: str | None = None, current: str | None = None,
                 gates: list[GateResult] | None = None, notes: list[str] | None = None,
                 evidence: str | None = None) -> NightReport:
        return cls(outcome=Outcome.CRITICAL, run_id=run_id, reason=reason, candidate=candidate, from_version=current,
                   gates=gates or [], notes=[*(notes or []), CRITICAL_NOTE], evidence=evidence)
