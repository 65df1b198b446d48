"""What follows every run, in one call: fingerprint the failure (maybe freeze), tell the operator,
keep the evidence, prune old evidence, rewrite the metrics.

Each step is best effort: a step that fails becomes a note on the report and in history, never an
exception, because the run's real work (and its exit code) is already decided.
"""

from __future__ import annotations

from typing import Any

from t3track.aftermath import evidence, fingerprints, metrics, notify
from t3track.config import Config
from t3track.state import StateStore


def after_run(config: Config, store: StateStore, report: Any, *, nightly: bool = True) -> list[str]:
    """Call at the end of a run, after its history line and last_run are written (lock still held).

    `nightly=False` for revert and adopt: told and recorded the same way, but their failures are not
    nightlies failing, so they never count towards the fingerprint self-freeze.
    Appends its notes to `report.notes` (so result.json has them) and returns them."""
    notes: list[str] = []

    def attempt(what: str, step: Any) -> Any:
        try:
            return step()
        except Exception as exc:  # noqa: BLE001 - see the module docstring
            notes.append(f"{what} failed: {getattr(exc, 'message', None) or exc}")
            return None

    freeze = attempt("fingerprinting the failure",
                     lambda: fingerprints.after_run(config, store, report)) if nightly else None
    if freeze is not None:
        notes.append(freeze.reason)
    deliveries = attempt("notifying", lambda: notify.after_run(config, store, report)) or []
    notes.extend(notify.deliveries_problems(deliveries))
    report.notes = list(report.notes) + notes
    attempt("writing the evidence", lambda: evidence.write_result(store, report.run_id,
                                                                   evidence.result_document(report)))
    attempt("pruning old evidence", lambda: evidence.prune(config, store))
    written = metrics.write_quietly(config, store)
    if written.problem:
        notes.append(written.problem)
        report.notes.append(written.problem)
    return notes


def after_action(config: Config, store: StateStore) -> str | None:
    """After an operator action (freeze, pin, deny, backup, ...): rewrite the metrics. Returns a problem or None."""
    return metrics.write_quietly(config, store).problem
