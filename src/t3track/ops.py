"""Operator actions on control state: freeze, pin, deny and their inverses, status and history.

Every change takes the run lock (a run in progress gets exit 75) and is recorded in history
with who and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from t3track import install, versions
from t3track.config import Config
from t3track.errors import UsageError
from t3track.state import Denial, Freeze, Pin, State, StateStore, iso, operator_name, utcnow


def lift_expired_freeze(store: StateStore, state: State, now: datetime | None = None) -> bool:
    """A freeze with an end lifts itself once the end has passed (call with the lock held)."""
    now = now or utcnow()
    if state.frozen is not None and state.frozen.expired(now):
        ended = state.frozen
        state.frozen = None
        store.save(state)
        store.record("unfreeze", by="t3track", reason=f"freeze expired at {iso(ended.until)}",
                     frozen_reason=ended.reason, automatic=True)
        return True
    return False


def _parse_until(until: str) -> datetime:
    try:
        moment = datetime.fromisoformat(until.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--until {until!r} is not an ISO date or time",
                         hint="use e.g. 2026-12-01 or 2026-12-01T06:00:00Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def freeze(store: StateStore, *, reason: str, for_: timedelta | None = None, until: str | None = None,
           by: str | None = None) -> Freeze:
    if not reason.strip():
        raise UsageError("--reason must say why", hint='e.g. --reason "holiday week, nobody on call"')
    if for_ is not None and until is not None:
        raise UsageError("give --for or --until, not both")
    now = utcnow()
    end = now + for_ if for_ is not None else _parse_until(until) if until is not None else None
    if end is not None and end <= now:
        raise UsageError(f"the freeze would end in the past ({iso(end)})")
    with store.lock():
        state = store.load()
        state.frozen = Freeze(reason=reason, by=by or operator_name(), at=now, until=end)
        store.save(state)
        store.record("freeze", by=state.frozen.by, reason=reason, until=iso(end) if end else None)
        return state.frozen


def unfreeze(store: StateStore, *, by: str | None = None) -> Freeze | None:
    with store.lock():
        state = store.load()
        was = state.frozen
        state.frozen = None
        store.save(state)
        store.record("unfreeze", by=by or operator_name(), was_frozen=was is not None,
                     frozen_reason=was.reason if was else None)
        return was


def pin(store: StateStore, version: str, *, reason: str, by: str | None = None) -> Pin:
    versions.require_valid(version)
    if not reason.strip():
        raise UsageError("--reason must say why")
    with store.lock():
        state = store.load()
        if state.denial(version):
            raise UsageError(f"{version} is denied ({state.denial(version).reason})",
                             hint=f"run `t3track allow {version}` first if you are sure")
        state.pinned = Pin(version=version, reason=reason, by=by or operator_name(), at=utcnow())
        store.save(state)
        store.record("pin", by=state.pinned.by, version=version, reason=reason)
        return state.pinned


def unpin(store: StateStore, *, by: str | None = None) -> Pin | None:
    with store.lock():
        state = store.load()
        was = state.pinned
        state.pinned = None
        store.save(state)
        store.record("unpin", by=by or operator_name(), version=was.version if was else None)
        return was


def deny(store: StateStore, version: str, *, reason: str, by: str | None = None) -> Denial:
    versions.require_valid(version)
    if not reason.strip():
        raise UsageError("--reason must say why")
    with store.lock():
        state = store.load()
        if state.current == version:
            raise UsageError(f"{version} is the current version",
                             hint="use `t3track revert` to leave it; revert denies it for you")
        state.denied = [d for d in state.denied if d.version != version]
        denial = Denial(version=version, reason=reason, gate=None, at=utcnow(), by=by or operator_name())
        state.denied.append(denial)
        store.save(state)
        store.record("deny", by=denial.by, version=version, reason=reason)
        return denial


def allow(store: StateStore, version: str, *, by: str | None = None) -> Denial | None:
    versions.require_valid(version)
    with store.lock():
        state = store.load()
        was = state.denial(version)
        state.denied = [d for d in state.denied if d.version != version]
        state.failures.pop(version, None)
        store.save(state)
        store.record("allow", by=by or operator_name(), version=version, was_denied=was is not None)
        return was


@dataclass
class UserStatus:
    name: str
    port: int
    backup_age_s: float | None
    backup_path: str | None


@dataclass
class Status:
    current: str | None
    previous: str | None
    channel: str
    package: str
    pinned: Pin | None
    frozen: Freeze | None
    denied: list[Denial]
    last_run: Any
    installed: list[str]
    users: list[UserStatus]
    current_link: str | None
    swap_in_progress: bool
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        def dt(value: datetime | None) -> str | None:
            return iso(value) if value else None

        return {
            "current": self.current,
            "previous": self.previous,
            "channel": self.channel,
            "package": self.package,
            "pinned": None if not self.pinned else {
                "version": self.pinned.version, "reason": self.pinned.reason,
                "by": self.pinned.by, "at": dt(self.pinned.at)},
            "frozen": None if not self.frozen else {
                "reason": self.frozen.reason, "by": self.frozen.by,
                "at": dt(self.frozen.at), "until": dt(self.frozen.until)},
            "denied": [{"version": d.version, "reason": d.reason, "gate": d.gate, "at": dt(d.at),
                        "evidence": d.evidence} for d in self.denied],
            "last_run": None if not self.last_run else {
                "at": dt(self.last_run.at), "outcome": self.last_run.outcome,
                "candidate": self.last_run.candidate, "exit_code": self.last_run.exit_code,
                "run_id": self.last_run.run_id},
            "installed": self.installed,
            "users": [{"name": u.name, "port": u.port, "backup_age_s": u.backup_age_s,
                       "backup": u.backup_path} for u in self.users],
            "current_link": self.current_link,
            "swap_in_progress": self.swap_in_progress,
            "warnings": self.warnings,
        }


def status(config: Config, store: StateStore) -> Status:
    """Read-only: never takes the lock, never writes. An expired freeze is shown as lifted."""
    from t3track import backup  # backups are their own concern

    state = store.load()
    now = utcnow()
    frozen = None if state.frozen and state.frozen.expired(now) else state.frozen
    link = config.root / "current"
    target = None
    warnings: list[str] = []
    if link.is_symlink():
        import os
        target = os.readlink(link)
        if not link.exists():
            warnings.append(f"{link} points at {target}, which does not exist")
    elif link.exists():
        warnings.append(f"{link} is a plain directory: run `t3track adopt VERSION` to bring it under t3track")
    new_host = state.current is None and not link.is_symlink() and not link.exists()
    if new_host:
        # nobody has served T3 here yet: a backup now would find no database
        warnings.append("t3track does not manage this host yet: run `t3track adopt VERSION` "
                        "(the first install; it starts and checks every user's server)")
    users = []
    for user in config.users:
        newest = backup.newest_backup(config, user.name)
        users.append(UserStatus(user.name, user.port,
                                newest.age_s(now) if newest else None,
                                str(newest.path) if newest else None))
        if newest is None:
            if not new_host:
                warnings.append(f"{user.name}: no backup yet; run `t3track backup --user {user.name}`")
        elif newest.age_s(now) > config.gates.backup_max_age.total_seconds():
            warnings.append(f"{user.name}: newest backup is older than gates.backup_max_age; "
                            f"run `t3track backup --user {user.name}`")
    journal = store.dir / "journal.json"
    return Status(
        current=state.current, previous=state.previous, channel=config.channel, package=config.package,
        pinned=state.pinned, frozen=frozen, denied=state.denied, last_run=state.last_run,
        installed=install.installed_versions(config), users=users, current_link=target,
        swap_in_progress=journal.exists(), warnings=warnings,
    )
