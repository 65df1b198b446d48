"""Evidence of each run under state_dir/evidence/<run-id>/: what happened and why, redacted.

The gates write their logs there (sandbox output, probe results); this module adds `result.json`
(the run's report, the same document as `t3track run --json`) and `run.log` (the progress lines),
prunes directories older than `evidence_max_age`, and keeps the layout `t3track show` reads back (t3track.commands.show).

Evidence that explains a denial still in force, and the last run's, is never pruned.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from t3track.clock import iso, utcnow
from t3track.config import Config
from t3track.errors import UsageError
from t3track.fsutil import append_line, atomic_write_text, ensure_private_dir
from t3track.redact import redact
from t3track.results import to_jsonable
from t3track.state import StateStore

EVIDENCE_DIR = "evidence"
RESULT_FILE = "result.json"
RUN_LOG = "run.log"
_RUN_ID_RE = re.compile(r"^(\d{8}T\d{6}Z)-[0-9a-z]+$")
_SAFE_ID_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]*$")

Progress = Callable[[str], None]


def evidence_root(store: StateStore) -> Path:
    return store.dir / EVIDENCE_DIR


def evidence_dir(store: StateStore, run_id: str) -> Path:
    if not _SAFE_ID_RE.match(run_id):
        raise UsageError(f"{run_id!r} is not a run id", hint="run ids look like 20261127T031500Z-a1b2c3 "
                         "(see `t3track history`)")
    return evidence_root(store) / run_id


def run_started_at(run_id: str) -> datetime | None:
    """The start time encoded in a run id made by night.new_run_id (second precision)."""
    match = _RUN_ID_RE.match(run_id)
    if not match:
        return None
    return datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def ensure_evidence_dir(store: StateStore, run_id: str) -> Path:
    """evidence/ and evidence/<run-id>/, both 0700 (mkdir's parents= would leave evidence/ 0755)."""
    store.ensure()
    ensure_private_dir(evidence_root(store))
    return ensure_private_dir(evidence_dir(store, run_id))


def result_document(report: Any) -> dict[str, Any]:
    """The run's report, the same document as `t3track run --json`."""
    document: dict[str, Any] = to_jsonable(report)
    return document


def redacted(value: Any) -> Any:
    """Every string in a JSON-like document passed through redact (values only, so the JSON stays valid)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redacted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redacted(v) for v in value]
    return value


def write_result(store: StateStore, run_id: str, document: dict[str, Any]) -> Path:
    """Write evidence/<run-id>/result.json (0600, atomic), every string redacted."""
    path = ensure_evidence_dir(store, run_id) / RESULT_FILE
    atomic_write_text(path, json.dumps(redacted(document), indent=2, default=str) + "\n")
    return path


def teed_progress(store: StateStore, run_id: str, progress: Progress) -> Progress:
    """A progress callback that also appends each line, timestamped and redacted, to evidence/<run-id>/run.log."""
    evidence_dir(store, run_id)  # validate before the first line

    def tee(text: str) -> None:
        try:
            progress(text)
        except OSError:
            pass  # output is never a reason to stop a swap (the CLI's own output already drops a broken stream)
        try:
            append_line(ensure_evidence_dir(store, run_id) / RUN_LOG, f"{iso(utcnow())} {redact(text)}")
        except OSError:
            pass  # evidence is best effort: a full disk must not stop a rollback half-way

    return tee


# ---------------------------------------------------------------- pruning


def _age_reference(entry: Path) -> datetime:
    started = run_started_at(entry.name)
    if started is not None:
        return started
    return datetime.fromtimestamp(entry.stat().st_mtime, tz=UTC)


def protected_runs(store: StateStore) -> set[str]:
    """Evidence directories pruning must keep: behind a denial still in force, and the last run's."""
    state = store.load()
    keep = {Path(d.evidence).name for d in state.denied if d.evidence}
    if state.last_run is not None and state.last_run.run_id:
        keep.add(state.last_run.run_id)
    return keep


def prune(config: Config, store: StateStore, *, now: datetime | None = None) -> list[Path]:
    """Remove evidence directories older than config.evidence_max_age; returns what was removed."""
    root = evidence_root(store)
    if not root.is_dir():
        return []
    moment = now or utcnow()
    keep = protected_runs(store)
    removed = []
    for entry in sorted(root.iterdir()):
        if not entry.is_dir() or entry.is_symlink() or entry.name in keep:
            continue
        if moment - _age_reference(entry) > config.evidence_max_age:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed
