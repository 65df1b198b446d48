"""Control state in state_dir: state.json (atomic), history.jsonl (append-only) and the run lock."""

from __future__ import annotations

import fcntl
import getpass
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from t3track import versions
from t3track.clock import iso, utcnow
from t3track.errors import LockBusy, StateError
from t3track.fsutil import append_line, atomic_write_text, make_private_dirs

STATE_FILE = "state.json"
JOURNAL_FILE = "journal.json"       # a swap under way (t3track.night.journal)
HISTORY_FILE = "history.jsonl"
SNAPSHOTS_DIR = "snapshots"        # pre-swap snapshots, one dir per run
LOCK_FILE = "lock"


def operator_name() -> str:
    for var in ("SUDO_USER", "LOGNAME", "USER"):
        if os.environ.get(var):
            return os.environ[var]
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return f"uid{os.getuid()}"


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


def _valid_version(value: str) -> str:
    """A version read back is held to the CLI's rule: it reaches paths (versions/<v>) and argv."""
    if not versions.is_valid(value):
        raise ValueError(f"{value[:80]!r} is not a valid version")
    return value


def utc_or_far(value: datetime) -> datetime:
    """Aware UTC; a moment UTC cannot hold (9999-12-31T23:00-14:00) is 'the far future'."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        return datetime.max.replace(tzinfo=UTC)


Version = Annotated[str, AfterValidator(_valid_version)]
Moment = Annotated[datetime, AfterValidator(utc_or_far)]


class Pin(_Model):
    version: Version
    reason: str
    by: str
    at: Moment


class Freeze(_Model):
    reason: str
    by: str
    at: Moment
    until: Moment | None = None

    def expired(self, now: datetime) -> bool:
        return self.until is not None and now >= self.until


class Denial(_Model):
    version: Version
    reason: str
    gate: str | None = None
    at: Moment
    by: str | None = None
    evidence: str | None = None
    fingerprint: str | None = None


class LastRun(_Model):
    at: Moment
    outcome: str
    candidate: str | None = None
    exit_code: int
    run_id: str | None = None
    ring: str | None = None  # the ring it moved, on a host with rings


class Served(_Model):
    """A stretch of time a ring's link named one version: what a later ring's soak is measured on."""
    version: Version
    since: Moment
    until: Moment | None = None  # None: it still does

    def served_for(self, now: datetime) -> float:
        return ((self.until or now) - self.since).total_seconds()


SERVED_KEPT = 30  # stretches kept per ring: a month of nightlies


class RingState(_Model):
    """What a ring has that the host does not share (see night.rings.RingStore). The first ring's current,
    previous and current_snapshot are the State's own fields (a host without rings is one ring)."""
    current: Version | None = None
    previous: Version | None = None
    current_snapshot: str | None = None
    pinned: Pin | None = None
    frozen: Freeze | None = None
    served: list[Served] = Field(default_factory=list)
    checked_at: Moment | None = None  # the last live re-check of its servers that passed

    def open_stretch(self) -> Served | None:
        """The stretch of the version the ring serves now (None before its first)."""
        return next((s for s in reversed(self.served) if s.until is None and s.version == self.current), None)


class Held(_Model):
    """A user left on the old version by consecutive nights because an agent was at work (`held: busy`)."""
    since: Moment                  # the first night of this streak
    nights: int = 1                # nights held in a row
    version: Version | None = None  # what the user was held from moving to, last time
    reason: str = "busy"


class Pending(_Model):
    """A candidate that passed every gate on a host with `when.approval: manual`, waiting for
    `t3track approve` (per ring move on a host with rings; `ring` None: the whole host)."""
    version: Version
    ring: str | None = None
    since: Moment                     # when it was first left pending
    gates_passed_at: Moment           # when its gates last passed: `approve` reruns them past approval_max_age
    from_version: str | None = None   # what it would replace
    run_id: str | None = None         # the night whose gates passed (`t3track show RUN_ID`)
    evidence: str | None = None
    gates: list[str] = Field(default_factory=list)  # name:user:outcome, as in history

    def approve_command(self) -> str:
        return f"t3track approve {self.version}" + (f" --ring {self.ring}" if self.ring else "")


def _ring_keys(value: dict) -> dict:
    for key in value:
        if not (isinstance(key, str) and 0 < len(key) <= 32 and key.replace("-", "").replace("_", "").isalnum()):
            raise ValueError(f"{str(key)[:40]!r} is not a ring name")
    return value


class State(_Model):
    schema_version: int = 1
    current: Version | None = None
    previous: Version | None = None
    pinned: Pin | None = None
    frozen: Freeze | None = None
    denied: list[Denial] = Field(default_factory=list)
    first_seen: dict[str, datetime] = Field(default_factory=dict)
    failures: dict[str, int] = Field(default_factory=dict)  # version -> consecutive gate failures
    last_run: LastRun | None = None
    # snapshots taken just before the swap into `current`: what `revert --restore-state` restores
    current_snapshot: str | None = None
    rings: Annotated[dict[str, RingState], AfterValidator(_ring_keys)] = Field(default_factory=dict)
    held: dict[str, Held] = Field(default_factory=dict)  # user -> their current streak of held nights
    pending: list[Pending] = Field(default_factory=list)  # candidates waiting for `t3track approve`

    @field_validator("first_seen", "failures")
    @classmethod
    def _version_keys(cls, value: dict) -> dict:
        for key in value:
            _valid_version(key)
        return value

    def denial(self, version: str) -> Denial | None:
        return next((d for d in self.denied if d.version == version), None)

    def pending_for(self, ring: str | None) -> Pending | None:
        return next((p for p in self.pending if p.ring == ring), None)

    def ring(self, name: str, *, first: bool) -> RingState:
        """One ring's record, read only; the first ring's current, previous and current_snapshot are
        this state's own fields."""
        own = self.rings.get(name, RingState())
        if not first:
            return own
        return own.model_copy(update={key: getattr(self, key) for key in RING_OWN})


@dataclass(frozen=True)
class HistoryEvent:
    at: str
    event: str
    by: str | None
    data: dict[str, Any]


class StateStore:
    """All reads and writes of state_dir go through here."""

    def __init__(self, state_dir: Path):
        self.dir = state_dir

    @property
    def state_path(self) -> Path:
        return self.dir / STATE_FILE

    @property
    def journal_path(self) -> Path:
        return self.dir / JOURNAL_FILE

    @property
    def history_path(self) -> Path:
        return self.dir / HISTORY_FILE

    @property
    def host(self) -> StateStore:
        """The whole host's store: itself (a ring's, night.rings.RingStore, gives the plain store of
        its state_dir)."""
        return self

    def snapshot_dir(self, run_id: str) -> Path:
        return self.dir / SNAPSHOTS_DIR / run_id

    @property
    def snapshots_root(self) -> Path:
        return self.dir / SNAPSHOTS_DIR

    def ensure(self) -> None:
        try:
            make_private_dirs(self.dir)  # created 0700; an existing (maybe shared) dir keeps its mode
        except OSError as exc:
            raise StateError(f"cannot create state_dir {self.dir}: {exc.strerror}",
                             hint="check the path and permissions of state_dir in the config") from None

    def load(self) -> State:
        try:
            text = self.state_path.read_bytes().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return State()
        except OSError as exc:
            raise StateError(f"cannot read {self.state_path}: {exc.strerror}",
                             hint="check its permissions; t3track never replaces a state file it cannot read") from None
        try:
            return State.model_validate(json.loads(text))
        except (ValueError, RecursionError, ValidationError) as exc:
            raise StateError(
                f"{self.state_path} is corrupt ({exc.__class__.__name__}); t3track will not overwrite it",
                hint=f"inspect it, restore it from a copy, or move it aside (mv {self.state_path} "
                f"{self.state_path}.bad) and run `t3track adopt VERSION` to start again; "
                f"{self.history_path} still lists what happened",
            ) from None

    def save(self, state: State) -> None:
        self.ensure()
        atomic_write_text(self.state_path, state.model_dump_json(indent=2) + "\n")

    def record(self, event: str, *, by: str | None = None, **data: Any) -> HistoryEvent:
        """Append one history line: {at, event, by, ...data}; long texts are cut (a registry or a
        user can put anything into a reason), so one line stays small."""
        self.ensure()
        data = {key: _bounded(value) for key, value in data.items()}
        entry = HistoryEvent(at=iso(utcnow()), event=event, by=_bounded(by), data=data)
        line = json.dumps({"at": entry.at, "event": event, "by": by, **data}, default=str, sort_keys=False)
        append_line(self.history_path, line)
        return entry

    def history(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Newest first. A line that is not a JSON object in UTF-8 (a torn last line, a stray edit)
        is skipped, never fatal."""
        try:
            lines = self.history_path.read_bytes().splitlines()
        except FileNotFoundError:
            return []
        events = []
        for raw in reversed(lines):
            if not raw.strip():
                continue
            try:
                event = json.loads(raw.decode("utf-8"))
            except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
                continue
            if not isinstance(event, dict):
                continue
            events.append(event)
            if limit is not None and len(events) >= limit:
                break
        return events

    def lock_holder(self) -> int | None:
        """The pid holding the run lock, read without touching it (a monitoring check must never take it,
        not even for a moment: a night starting then would exit 75): the kernel's /proc/locks names the
        holder of a flock on the lock file's inode."""
        try:
            st = os.stat(self.dir / LOCK_FILE)
            with open("/proc/locks", encoding="ascii", errors="replace") as locks:
                table = locks.read()
        except OSError:
            return None
        wanted = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        for line in table.splitlines():
            fields = line.split()  # 1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF  ("->" marks a waiter)
            if len(fields) >= 6 and fields[1] == "FLOCK" and fields[2] != "->" and fields[5] == wanted:
                try:
                    return int(fields[4])
                except ValueError:
                    return None
        return None

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Non-blocking exclusive flock on state_dir/lock; the holder's pid is written into it."""
        self.ensure()
        path = self.dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                raise LockBusy(
                    f"another t3track holds {path}" + (f" (pid {holder})" if holder else ""),
                    holder_pid=holder,
                    hint="wait for it to finish; the nightly run can take several minutes",
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


RING_OWN = ("current", "previous", "current_snapshot")


def note_served(ring: RingState, version: str | None, now: datetime) -> None:
    """The ring's link now names `version`: close the stretch that was open and start one."""
    for stretch in ring.served:
        if stretch.until is None:
            stretch.until = now
    if version is not None:
        ring.served.append(Served(version=version, since=now))
    del ring.served[:-SERVED_KEPT]


HISTORY_TEXT_MAX = 4000   # characters of one value in a history line
HISTORY_ITEMS_MAX = 200   # entries of one list or mapping


def _bounded(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return value if len(value) <= HISTORY_TEXT_MAX else value[:HISTORY_TEXT_MAX] + f"… [{len(value)} chars]"
    if depth > 4:
        return _bounded(str(value))
    if isinstance(value, list | tuple):
        return [_bounded(v, depth + 1) for v in list(value)[:HISTORY_ITEMS_MAX]]
    if isinstance(value, dict):
        return {_bounded(str(k)): _bounded(v, depth + 1) for k, v in list(value.items())[:HISTORY_ITEMS_MAX]}
    return value


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
