"""`t3track revert`: back to the previous (or a named, installed) version with the same live check.

It denies the version it leaves, and restores the databases from the snapshots taken just before the
swap into the current version only when asked (`--restore-state`): rows written since would be lost.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from t3track import versions
from t3track.config import Config
from t3track.errors import UsageError
from t3track.host import tree
from t3track.night import ledger, recovery, rings, swap
from t3track.night.report import NightReport
from t3track.results import new_run_id
from t3track.state import State, StateStore, operator_name


def revert(config: Config, store: StateStore, *, to: str | None = None, restore_state: bool = False,
           by: str | None = None, ring: str | None = None, ignore_busy: bool = False,
           progress: Callable[[str], None] = lambda _: None) -> NightReport:
    """Revert the host (or, on a host with rings, the ring named): see the module's docstring."""
    if to is not None:
        versions.require_valid(to, "--to")
    run_id = new_run_id()
    host_store = store
    config, store = rings.for_operator(config, store, ring, "revert")
    with host_store.lock():
        recovery.require_state(config.host, host_store)
        recovery.recover_or_refuse(config.host, host_store, progress)
        state = store.load()
        current = state.current
        if current is None:
            raise UsageError("t3track has no current version to revert from",
                             hint="run `t3track adopt VERSION` on a host t3track does not manage yet")
        target = to or state.previous
        if target is None:
            raise UsageError("there is no previous version recorded",
                             hint="name an installed one with --to VERSION; if t3track cannot act, follow the "
                             "manual rollback in runbooks/t3-version-bump.md")
        if target == current:
            raise UsageError(f"{target} is already current")
        _refuse_denied(host_store.load(), target)
        if not tree.prefix_of(config, target).is_dir():
            raise UsageError(f"{target} is not installed under {tree.versions_dir(config)}",
                             hint="installed: " + (", ".join(tree.installed_versions(config)) or "none"))
        restore_from = None
        warnings = []
        snapshot = Path(state.current_snapshot) if state.current_snapshot else None
        if restore_state:
            if target != state.previous:
                raise UsageError(f"--restore-state restores the databases from just before the swap "
                                 f"{state.previous} -> {current}, so it only goes back to {state.previous}",
                                 hint=f"revert to {state.previous} with --restore-state, or to {target} without it "
                                 "and restore a backup by hand (runbooks/t3-version-bump.md)")
            if snapshot is None or not snapshot.is_dir():
                raise UsageError("no pre-swap snapshot of the current version is kept, so state cannot be restored",
                                 hint="revert without --restore-state, or restore a backup by hand "
                                 "(runbooks/t3-version-bump.md, manual rollback)")
            restore_from = snapshot
        else:
            warnings += swap.migrated_forward_all(config, state, target)
        plan = swap.plan_swap(store, run_id=run_id, from_version=current, to_version=target, kind="revert",
                              restore_from=restore_from, ring=config.ring)
        moved = swap.swap_and_verify(config, store, plan, progress, ignore_busy=ignore_busy)
        who = by or operator_name()
        if moved.outcome == "swapped" and restore_state:
            warnings.append(f"the databases as they were just before this revert are kept in "
                            f"{store.snapshot_dir(run_id)} until the next swap")
        if moved.outcome == "swapped":  # settle denied the version it left: say so, and how to undo it
            warnings.append(f"denied {current} (the version this revert left; `t3track allow {current}` "
                            "to consider it again)")
        report = ledger.conclude(config, store, "revert", moved, run_id=run_id, notes=warnings, by=who)
        report.ring = config.ring
        ledger.record_run(config, store, report, event="revert", by=who, nightly=False, details={
            "from": current, "to": target, "restore_state": restore_state, "restored": moved.restored_users,
            **({"held": [f"{h.user}:{h.reason}" for h in report.held]} if report.held else {})})
        return report


def _refuse_denied(state: State, target: str) -> None:
    """A denied version (it failed a gate or live, or an operator denied it) or one that failed a gate
    and is not denied yet is refused, as `pin` refuses it: going there is an outage, then a rollback."""
    denial = state.denial(target)
    if denial is not None:
        gate = f", gate {denial.gate}" if denial.gate else ""
        raise UsageError(f"{target} is denied ({denial.reason}{gate}); nothing changed",
                         hint=f"t3track allow {target}, then revert again if you are sure")
    failed = state.failures.get(target)
    if failed:
        raise UsageError(f"{target} was refused by the gates {failed} time(s) and is not denied yet; nothing changed",
                         hint=f"t3track allow {target} (it clears the count), then revert again if you are sure")
