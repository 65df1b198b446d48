"""`t3track drill`: prove on the live host that swap and rollback work, without changing version.

A second copy of the current install is made under its own prefix, `versions/<current>+drill.<stamp>`
(SemVer build metadata: the server still reports <current>, and `swap.same_version` ignores build
metadata, so the copy passes the version check). The real swap then runs to that copy: stop, snapshot,
flip, start, live check. The only simulated step: the copy's live check passes and is treated as
failed. So the real rollback runs: stop, flip back, restore every user's database from the pre-swap
snapshot (a drill restores even though nothing migrated, so the restore path is exercised too; writes
made in the second or two the copy served are undone), start, live check of the old version. Every step is timed, and each user's downtime
(from each stop until that user's server passed its live check again) is reported.

It refuses while frozen or while a swap journal is left, leaves current, state.json and the databases
as they were, removes the copy and its snapshots, and is recorded in history as a `drill` event.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from t3track import versions
from t3track.aftermath import evidence
from t3track.clock import stamp, utcnow
from t3track.config import Config
from t3track.errors import ExitCode, UsageError
from t3track.fsutil import fsync_dir
from t3track.host import tree
from t3track.host.services import downtime
from t3track.night import journal, ledger, recovery, rings, swap
from t3track.results import GateResult, Outcome, json_key, new_run_id
from t3track.state import StateStore, operator_name

Progress = Callable[[str], None]
SIMULATED = "the copy's live check passed and was treated as failed (the only simulated step)"
DRILL_TAG = "+drill."


@dataclass(frozen=True)
class DrillPlan:
    current: str
    copy: str
    users: list[str]
    ring: str | None = None

    @property
    def question(self) -> str:
        where = f"ring {self.ring} of this live host" if self.ring else "this live host"
        return (f"Drill on {where}: stop {', '.join(self.users)}, swap to a copy of {self.current}, "
                f"then roll back to {self.current} for real. Users lose their servers for a few seconds, "
                "twice. Go ahead?")


@dataclass
class DrillStep:
    name: str
    at_s: float          # seconds since the drill started
    duration_s: float


@dataclass(kw_only=True)
class DrillReport:
    outcome: Outcome                   # rolled_back (the drill ran) | critical (the rollback failed)
    passed: bool                       # rolled back because of the simulated failure, old version verified
    run_id: str
    reason: str
    version: str
    copy: str
    steps: list[DrillStep] = field(default_factory=list)
    downtime_s: dict[str, float] = field(default_factory=dict)
    gates: list[GateResult] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    evidence: str | None = None
    recovered: str | None = None
    dry_run: bool = False
    simulated: str = SIMULATED
    ring: str | None = json_key("ring", omit_none=True, default=None)  # the ring it drilled, on a host with rings
    kind: str = json_key("kind", default="drill")
    json_extra = {"exit_code": "exit_code", "from": "from_version", "to": "to_version", "candidate": "candidate",
                  "max_downtime_s": "max_downtime_s"}

    @property
    def exit_code(self) -> ExitCode:
        """A drill that rolled back as planned is a success (0), unlike a night's rollback."""
        if self.outcome is Outcome.CRITICAL:
            return ExitCode.CRITICAL
        return ExitCode.OK if self.passed else ExitCode.REFUSED

    @property
    def notify_event(self) -> str | None:
        return "critical" if self.outcome is Outcome.CRITICAL else None  # a drill that ran is no news

    @property
    def candidate(self) -> str:
        return self.copy

    @property
    def from_version(self) -> str:
        return self.version

    @property
    def to_version(self) -> str | None:
        return self.version if self.outcome is Outcome.ROLLED_BACK else None

    @property
    def max_downtime_s(self) -> float:
        return max(self.downtime_s.values(), default=0.0)


# ---------------------------------------------------------------- planning


def copy_name(current: str, stamp: str) -> str:
    base = current.split("+", 1)[0]
    return versions.require_valid(f"{base}{DRILL_TAG}{stamp}", "drill copy")


def plan_drill(config: Config, store: StateStore, ring: str | None = None) -> DrillPlan:
    """Read-only: what the drill would do, or a UsageError saying why it must not run now. On a host
    with rings, a drill moves one ring (`ring`), so the others never stop."""
    config, store = rings.for_operator(config, store, ring, "drill")
    if store.journal_path.exists():
        raise UsageError("a swap is unfinished (its journal is left); a drill would swap on top of it",
                         hint="run `t3track run` (it recovers the swap first) and check `t3track status`")
    state = store.load()
    if state.frozen is not None and not state.frozen.expired(utcnow()):
        raise UsageError(f"t3track is frozen ({state.frozen.reason}); a drill swaps servers, which a freeze "
                         "is there to prevent", hint="drill after `t3track unfreeze` (or after the freeze ends)")
    if state.current is None:
        raise UsageError("t3track has no current version: nothing to drill",
                         hint="bring the host under t3track with `t3track adopt VERSION` first")
    live = tree.current_version(config)
    if live != state.current:
        raise UsageError(f"{config.root / 'current'} points at {live or 'nothing'} but t3track's current is "
                         f"{state.current}", hint="sort that out first (`t3track status`, runbooks/t3-version-bump.md)")
    if not tree.prefix_of(config, state.current).is_dir():
        raise UsageError(f"{state.current} is not installed under {tree.versions_dir(config)}")
    if not config.users:
        raise UsageError("no users in the config: there is nothing to swap and roll back")
    return DrillPlan(state.current, copy_name(state.current, stamp()),
                     [u.name for u in config.users], ring=config.ring)


# ---------------------------------------------------------------- the copy


def _remove_tree(path: Path) -> None:
    going = path.with_name(path.name + ".removing")
    os.rename(path, going)  # a half-deleted tree never carries a version's name
    shutil.rmtree(going, ignore_errors=True)


def _remove_stale_copies(config: Config) -> None:
    """Copies left by a killed drill (never the one `current` points at)."""
    vdir = tree.versions_dir(config)
    live = tree.current_version(config)
    for entry in vdir.iterdir() if vdir.is_dir() else []:
        if DRILL_TAG not in entry.name or entry.name == live:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink()


def _make_copy(config: Config, plan: DrillPlan) -> Path:
    source = tree.prefix_of(config, plan.current)
    final = tree.prefix_of(config, plan.copy)
    partial = final.with_name(final.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    shutil.copytree(source, partial, symlinks=True)
    os.rename(partial, final)
    fsync_dir(final.parent)
    return final


# ---------------------------------------------------------------- timing


class _Timeline:
    """Progress lines with the time they arrived: each line starts a step that ends at the next."""

    def __init__(self, progress: Progress):
        self.started = time.monotonic()
        self.marks: list[tuple[float, str]] = []
        self.progress = progress

    def __call__(self, text: str) -> None:
        self.marks.append((time.monotonic() - self.started, text))
        self.progress(text)

    def steps(self, end: float) -> list[DrillStep]:
        out = []
        for i, (at, text) in enumerate(self.marks):
            until = self.marks[i + 1][0] if i + 1 < len(self.marks) else end
            out.append(DrillStep(text, at, until - at))
        return out




# ---------------------------------------------------------------- the drill


def run_drill(config: Config, store: StateStore, *, by: str | None = None, ring: str | None = None,
              progress: Progress = lambda _: None) -> DrillReport:
    run_id = new_run_id()
    who = by or operator_name()
    with store.lock():
        recovery.require_state(config, store)
        plan = plan_drill(config, store, ring)  # again, under the lock
        config, store = rings.for_operator(config, store, ring, "drill")
        timeline = _Timeline(evidence.teed_progress(store, run_id, progress))
        _remove_stale_copies(config)
        timeline(f"copy {tree.prefix_of(config, plan.current)} to {tree.prefix_of(config, plan.copy)}")
        _make_copy(config, plan)
        moved = swap.swap_and_verify(config, store, swap.plan_swap(
            store, run_id=run_id, from_version=plan.current, to_version=plan.copy, kind="drill",
            simulate_live_failure=True, ring=config.ring), timeline)
        swap_end = time.monotonic()
        if moved.outcome == "rolled_back":
            timeline("clean up: journal, the copy and its snapshots")
            journal.remove(store)
            _remove_tree(tree.prefix_of(config, plan.copy))
            shutil.rmtree(store.snapshot_dir(run_id), ignore_errors=True)
        steps = timeline.steps(time.monotonic() - timeline.started)
        # downtime is measured on the swap's own marks, not on our clean-up afterwards
        report = _report(run_id, plan, moved, steps, downtime(moved.marks, plan.users, swap_end))
        report.evidence = str(evidence.evidence_dir(store, run_id))
        report.ring = config.ring
        ledger.record_run(config, store, report, event="drill", by=who, nightly=False, details={
            "passed": report.passed, "version": plan.current, "copy": plan.copy,
            "downtime_s": round(report.max_downtime_s, 3), "simulated": SIMULATED, "restored": moved.restored_users})
        return report


def _report(run_id: str, plan: DrillPlan, result: swap.SwapResult, steps: list[DrillStep],
            down: dict[str, float]) -> DrillReport:
    real_failure = next((g for g in result.live if g.outcome != "pass"), None)
    common: dict[str, Any] = {"run_id": run_id, "version": plan.current, "copy": plan.copy, "steps": steps, "downtime_s": down,
              "gates": result.live + result.rollback_live, "timings": result.timings}
    if result.outcome == "critical":
        return DrillReport(outcome=Outcome.CRITICAL, passed=False,
                           reason=f"the rollback failed: {result.reason}; t3track froze itself and kept its journal",
                           notes=["see runbooks/t3-version-bump.md (manual rollback), then `t3track unfreeze`"],
                           **common)
    if real_failure is not None or len(result.live) < len(plan.users):
        why = real_failure.detail if real_failure else result.reason
        return DrillReport(outcome=Outcome.ROLLED_BACK, passed=False,
                           reason=f"the rollback worked, but the copy of {plan.current} failed its live check for "
                           f"real ({why}): a swap on this host fails even without a new version", **common)
    note = [f"restored the databases of {', '.join(result.restored_users)} from the pre-swap snapshots (for real, "
            "as a rollback of a migrating version would; writes made while the copy served are undone)"] \
        if result.restored_users else []
    return DrillReport(outcome=Outcome.ROLLED_BACK, passed=True,
                       reason=f"swapped to a copy of {plan.current} and rolled back to {plan.current}; every live "
                       f"check passed; longest downtime {max(down.values(), default=0):.1f}s", notes=note, **common)
