"""`t3track show RUN-ID`: one run read back: its result, the evidence files kept, its history lines."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from t3track.aftermath.evidence import RESULT_FILE, evidence_dir, evidence_root
from t3track.errors import UsageError
from t3track.state import StateStore


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

    json_extra = ("exists",)

    @property
    def exists(self) -> bool:
        return self.path.is_dir()


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
