"""Evidence of each run under state_dir/evidence/<run-id>/: what happened and why, redacted.

The gates write their logs there (sandbox output, probe results); this module adds `result.json`
(the run's report, the same document as `t3track run --json`) and `run.log` (the progress lines),
prunes directories older than `evidence_max_age`, and reads one run back for `t3track show`.

Evidence that explains a denial still in force, and the last run's, is never pruned.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from t3track.config import Config
from t3track.errors import UsageError
from t3track.fsutil import append_line, atomic_write_text, ensure_private_dir
from t3track.redact import redact
from t3track.state import StateStore, iso, utcnow

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
    return datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)


def ensure_evidence_dir(store: StateStore, run_id: str) -> Path:
    """evidence/ and evidence/<run-id>/, both 0700 (mkdir's parents= would leave evidence/ 0755)."""
    store.ensure()
    ensure_private_dir(evidence_root(store))
    return ensure_private_dir(evidence_dir(store, run_id))


def result_document(report: Any) -> dict[str, Any]:
    """`report.to_json()` plus what the gates' JSON leaves out: each gate's fingerprint and evidence."""
    document = report.to_json()
    gates = getattr(report, "gates", None) or []
    for entry, gate in zip(document.get("gates", []), gates):
        entry.setdefault("fingerprint", getattr(gate, "fingerprint", None))
        entry.setdefault("evidence", getattr(gate, "evidence", None))
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
        progress(text)
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
    return datetime.fromtimestamp(entry.stat().st_mtime, tz=timezone.utc)


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


# ---------------------------------------------------------------- reading one run back


@dataclass
class EvidenceFile:
    name: str
    size: int


@dataclass
class RunRecord:
    run_id: str
    path: Path
    result: dict[str, Any] | None               # result.json, when the run wrote one
    files: list[EvidenceFile] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)  # history lines of this run, oldest first

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "path": str(self.path), "exists": self.path.is_dir(),
                "result": self.result, "files": [{"name": f.name, "size": f.size} for f in self.files],
                "events": self.events}


def _resolve_run_id(store: StateStore, run_id: str) -> str:
    """An exact run id, a unique prefix of one, or `last`."""
    if run_id == "last":
        for event in store.history():
            if event.get("run_id"):
                return str(event["run_id"])
        raise UsageError("there is no run in history yet")
    evidence_dir(store, run_id)  # validates the shape
    root = evidence_root(store)
    known = {p.name for p in root.iterdir() if p.is_dir()} if root.is_dir() else set()
    known |= {str(e["run_id"]) for e in store.history() if e.get("run_id")}
    if run_id in known:
        return run_id
    matches = sorted(k for k in known if k.startswith(run_id))
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise UsageError(f"{run_id!r} matches {len(matches)} runs", hint="give more of it: " + ", ".join(matches[:5]))
    raise UsageError(f"no run {run_id!r} in history or under {root}",
                     hint="`t3track history` lists runs; evidence older than evidence_max_age is pruned")


def show(store: StateStore, run_id: str) -> RunRecord:
    run_id = _resolve_run_id(store, run_id)
    path = evidence_dir(store, run_id)
    result = None
    files = []
    if path.is_dir():
        try:
            result = json.loads((path / RESULT_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            result = None
        for item in sorted(path.rglob("*")):
            if item.is_file():
                files.append(EvidenceFile(str(item.relative_to(path)), item.stat().st_size))
    events = [e for e in reversed(store.history()) if e.get("run_id") == run_id]
    return RunRecord(run_id, path, result, files, events)
