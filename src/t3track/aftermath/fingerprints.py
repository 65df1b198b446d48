"""Failure fingerprints: how a candidate failed (gate, step, status, error class), and the self-freeze.

Every failed gate carries a fingerprint such as `pairing-probe:exchange:404:HTTPStatus`. After a
refused or rolled-back night the denial of the candidate (when it is denied) gets its fingerprint and
evidence, and the failure joins a streak kept in state_dir/fingerprints.json. When
`fingerprint_freeze_after` consecutive nightlies (distinct versions; a retry of the same version does
not count twice) fail with the same fingerprint, upstream has most likely broken something the next
nightly will break too: the channel freezes itself, with a reason that names the versions, the
fingerprint and the evidence, until an operator unfreezes it. A verified swap ends the streak; so
does the freeze (after `unfreeze`, it takes K fresh failures to freeze again).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from t3track.clock import iso, utcnow
from t3track.config import Config
from t3track.fsutil import atomic_write_text
from t3track.results import HOST_GATES
from t3track.state import Freeze, StateStore

FINGERPRINTS_FILE = "fingerprints.json"


@dataclass
class Failure:
    version: str
    fingerprint: str
    gate: str
    run_id: str
    evidence: str | None
    at: str


def failure_of(report: Any) -> tuple[str, str] | None:
    """(gate, fingerprint) of a refused or rolled-back run with a candidate, else None."""
    if getattr(report, "outcome", None) not in ("refused", "rolled_back") or not getattr(report, "candidate", None):
        return None
    if getattr(report, "held_by", None):
        return None  # a pre_swap hook said no: not the candidate's failure
    failed = next((g for g in report.gates or [] if g.outcome == "fail"), None)
    if failed is not None:
        if failed.name in HOST_GATES:
            return None  # the host's fault (no fresh backup), not the candidate's: no streak
        return failed.name, failed.fingerprint or f"{failed.name}:-:-:unknown"
    if report.outcome == "rolled_back":
        return "swap", "swap:-:-:CriticalError"  # a stop/flip/start step failed before any live check
    if report.gates:
        return None  # refused by policy after the gates (cannot happen today): nothing to fingerprint
    return "install", "install:-:-:IntegrityError"


def _load(store: StateStore) -> list[Failure]:
    try:
        data = json.loads((store.dir / FINGERPRINTS_FILE).read_text(encoding="utf-8"))
        return [Failure(**entry) for entry in data.get("streak", [])]
    except (OSError, ValueError, TypeError, AttributeError):
        return []


def _save(store: StateStore, streak: list[Failure]) -> None:
    store.ensure()
    atomic_write_text(store.dir / FINGERPRINTS_FILE,
                      json.dumps({"streak": [asdict(f) for f in streak]}, indent=2) + "\n")


def streak(store: StateStore) -> list[Failure]:
    return _load(store)


def after_run(config: Config, store: StateStore, report: Any) -> Freeze | None:
    """Record this run's failure fingerprint; freeze the channel when the streak is long enough.

    Call after the run's state is saved (the lock still held). Returns the freeze it set, if any."""
    if getattr(report, "dry_run", False):
        return None
    if getattr(report, "outcome", None) == "swapped":
        if _load(store):
            _save(store, [])
        return None
    found = failure_of(report)
    if found is None:
        return None
    gate, fingerprint = found
    version = report.candidate
    state = store.load()
    denial = state.denial(version)
    if denial is not None:
        denial.fingerprint = denial.fingerprint or fingerprint
        denial.evidence = denial.evidence or report.evidence
        denial.gate = denial.gate or gate

    failures = _load(store)
    if failures and failures[-1].fingerprint != fingerprint:
        failures = []
    failures = [f for f in failures if f.version != version]  # a retry is not a new nightly
    failures.append(Failure(version, fingerprint, gate, report.run_id, report.evidence, iso(utcnow())))

    freeze = None
    threshold = config.fingerprint_freeze_after
    if threshold and len(failures) >= threshold and state.frozen is None:
        names = ", ".join(f.version for f in failures)
        evidence = ", ".join(f.evidence for f in failures if f.evidence) or "none kept"
        freeze = Freeze(
            by="t3track", at=utcnow(),
            reason=(f"t3track froze itself: {len(failures)} nightlies in a row ({names}) failed {gate} the same "
                    f"way ({fingerprint}); likely an upstream regression. Evidence: {evidence}. Look at it, "
                    f"then `t3track unfreeze` (or `t3track pin` a good version)"))
        state.frozen = freeze
        failures = []
    store.save(state)
    _save(store, failures)
    if freeze is not None:
        store.record("freeze", by="t3track", reason=freeze.reason, automatic=True, fingerprint=fingerprint,
                     run_id=report.run_id)
    return freeze
