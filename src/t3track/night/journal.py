"""The swap journal: written atomically before each phase, so a killed run can be finished or undone.

A journal on disk means a swap (or a rollback) did not finish. The next run reads it first.
"""

from __future__ import annotations

import json
import os
import signal
from datetime import datetime
from enum import Enum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from t3track.clock import utcnow
from t3track.errors import CriticalError
from t3track.fsutil import atomic_write_text, fsync_dir
from t3track.state import StateStore, Version


class Phase(str, Enum):
    PLANNED = "planned"            # nothing touched yet
    STOPPING = "stopping"          # servers being stopped
    SNAPSHOTTED = "snapshotted"    # every pre-swap snapshot is complete
    FLIPPED = "flipped"            # root/current points at the candidate
    STARTED = "started"            # candidate servers started, live check running
    VERIFIED = "verified"          # live check passed; only bookkeeping left
    ROLLING_BACK = "rolling_back"  # undoing: stop, flip back, restore, start, verify old


class RollbackCause(str, Enum):
    LIVE_CHECK = "live-check"      # the candidate failed a live check: a nightly candidate is denied for it
    STEP = "step"                  # a stop/snapshot/flip/start step failed: maybe the host's fault
    DRILL = "drill"                # the drill's simulated failure
    INTERRUPTED = "interrupted"    # a stop signal before the flip: back on the old version, nobody to blame


class Journal(BaseModel):
    model_config = ConfigDict(extra="ignore")

    run_id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,80}$")
    kind: str = Field(default="swap", pattern=r"^(swap|revert|adopt|drill|recheck)$")
    ring: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9_-]{0,31}$")  # None: the whole host
    from_version: Version | None
    to_version: Version
    phase: Phase
    snapshot_dir: str | None = None
    rollback_reason: str | None = None
    rollback_cause: RollbackCause | None = None
    simulate_live_failure: bool = False  # the drill
    restore_from: str | None = None  # revert --restore-state: snapshots to restore before starting
    started_at: datetime
    updated_at: datetime


# Fault injection for the kill-at-every-phase tests: the process SIGKILLs itself right after writing
# this phase, exactly as a power cut or an OOM kill would leave it.
FAULT_KILL_ENV = "T3TRACK_FAULT_KILL_AT"      # tests: signal ourselves right after writing this phase
FAULT_SIGNAL_ENV = "T3TRACK_FAULT_SIGNAL"      # which signal (KILL by default; TERM, HUP, INT)


def write(store: StateStore, journal: Journal, phase: Phase | None = None) -> Journal:
    if phase is not None:
        journal.phase = phase
    journal.updated_at = utcnow()
    store.ensure()
    atomic_write_text(store.journal_path, journal.model_dump_json(indent=2) + "\n")
    if os.environ.get(FAULT_KILL_ENV) == journal.phase.value:
        os.kill(os.getpid(), getattr(signal, "SIG" + os.environ.get(FAULT_SIGNAL_ENV, "KILL"), signal.SIGKILL))
    return journal


def read(store: StateStore) -> Journal | None:
    path = store.journal_path
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        text = ""
    try:
        journal = Journal.model_validate(json.loads(text))
        for where in (journal.snapshot_dir, journal.restore_from):
            if where is not None and Path(where).parent != store.snapshots_root:
                raise ValueError(f"{where} is not a snapshot dir of {store.snapshots_root}")
        return journal
    except (ValueError, RecursionError, ValidationError):
        raise CriticalError(
            f"the swap journal {path} is unreadable; a swap was interrupted and cannot be recovered automatically",
            hint=f"check where root/current points (`readlink ROOT/current`, ROOT from the config) and that every "
            f"server serves (see runbooks/t3-version-bump.md, manual rollback), then move {path} aside and run "
            f"`t3track run` again",
        ) from None


def remove(store: StateStore) -> None:
    try:
        store.journal_path.unlink()
    except FileNotFoundError:
        return
    fsync_dir(store.dir)
