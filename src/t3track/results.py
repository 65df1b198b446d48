"""What steps hand each other and what the CLI renders: gate results, outcomes and their exit codes,
run ids, and the one way any result becomes JSON (for `--json`, evidence and history alike)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

from t3track.clock import iso, stamp
from t3track.errors import ExitCode

# The checks a night reports, by name (one place: config, the night, fingerprints, metrics, notify)
BACKUP_PRESENT = "backup-present"
SANDBOX_SERVE = "sandbox-serve"
PAIRING_PROBE = "pairing-probe"
LIVE_VERIFY = "live-verify"
ROLLBACK_VERIFY = "rollback-verify"
DRIFT = "drift"
GATE_NAMES = (BACKUP_PRESENT, SANDBOX_SERVE, PAIRING_PROBE)  # the gates `gates.order` may name
HOST_GATES = (BACKUP_PRESENT, DRIFT)  # checks of the host, not the candidate: never its failure

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"


class Outcome(str, Enum):
    SWAPPED = "swapped"          # moved and verified live
    NOOP = "noop"                # nothing to do (frozen, pinned and current, no newer candidate, a dry run)
    REFUSED = "refused"          # a gate or policy said no; nothing changed
    ROLLED_BACK = "rolled_back"  # moved, failed live, and the old version serves again
    ERROR = "error"              # the environment failed (registry, npm, disk); nothing changed
    CRITICAL = "critical"        # a rollback failed or state is inconsistent; an operator must act

    def __str__(self) -> str:
        return self.value

    @property
    def exit_code(self) -> ExitCode:
        return _EXIT_CODES[self]


# The one table from a run's outcome to its exit code.
_EXIT_CODES = {
    Outcome.SWAPPED: ExitCode.OK,
    Outcome.NOOP: ExitCode.OK,
    Outcome.REFUSED: ExitCode.REFUSED,
    Outcome.ROLLED_BACK: ExitCode.REFUSED,
    Outcome.ERROR: ExitCode.ENVIRONMENT,
    Outcome.CRITICAL: ExitCode.CRITICAL,
}


def new_run_id() -> str:
    import secrets  # only runs need an id: keep it off every command's start-up

    return stamp() + "-" + secrets.token_hex(3)


def json_key(name: str | bool, *, omit_none: bool = False, **kwargs: Any) -> Any:
    """A dataclass field with the key it has in JSON (e.g. `from_version` is `from`), or False: left out;
    `omit_none`: left out while None (a key only some hosts have, e.g. a user's ring)."""
    return field(metadata={"json": name, "omit_none": omit_none}, **kwargs)


@dataclass
class GateResult:
    """A gate's verdict for one user; also the live check's and the rollback check's."""

    name: str
    user: str
    outcome: str              # PASS | FAIL | INCONCLUSIVE
    duration_s: float
    detail: str               # redacted
    evidence: str | None = None
    one_way: list[str] = field(default_factory=list)   # migrations the candidate adds
    fingerprint: str | None = None                     # how it failed, e.g. pairing-probe:exchange:404:HTTPStatus
    # a live check: the orchestrationProtocolVersion the server reported (0.1.x; 1 when absent)
    protocol: int | None = json_key("protocol", omit_none=True, default=None)

    @property
    def passed(self) -> bool:
        return self.outcome == PASS

    @property
    def failed(self) -> bool:
        return self.outcome == FAIL


def first_failure(results: list[GateResult]) -> GateResult | None:
    """The first result that blocks (inconclusive informs, never blocks)."""
    return next((r for r in results if r.failed), None)


class RunReport(Protocol):
    """What every run's report offers the aftermath (evidence, fingerprints, notifications, metrics)."""

    run_id: str
    reason: str
    gates: list[GateResult]
    notes: list[str]
    evidence: str | None
    dry_run: bool

    @property
    def outcome(self) -> Outcome: ...
    @property
    def exit_code(self) -> ExitCode: ...
    @property
    def candidate(self) -> str | None: ...
    @property
    def from_version(self) -> str | None: ...
    @property
    def to_version(self) -> str | None: ...


def to_jsonable(value: Any) -> Any:
    """Any result as plain JSON values: dataclasses (keys renamed or left out by `json_key`, plus a
    class's `json_extra` {key: attribute}), pydantic models, enums, datetimes (ISO, seconds), paths; floats to ms."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if hasattr(value, "model_dump"):  # pydantic
        return to_jsonable(value.model_dump())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        doc = {f.metadata.get("json", f.name): to_jsonable(getattr(value, f.name))
               for f in dataclasses.fields(value) if f.metadata.get("json", True) is not False
               and not (f.metadata.get("omit_none") and getattr(value, f.name) is None)}
        extra = getattr(value, "json_extra", {})
        for key, attr in (extra.items() if isinstance(extra, dict) else ((n, n) for n in extra)):
            doc[key] = to_jsonable(getattr(value, attr))
        return doc
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    return str(value)
