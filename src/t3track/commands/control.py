"""Operator actions on control state: freeze, pin, deny and their inverses.

Every change takes the run lock (a run in progress gets exit 75) and is recorded in history
with who and why.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from t3track import versions
from t3track.clock import iso, parse_iso, utcnow
from t3track.errors import UsageError
from t3track.state import Denial, Freeze, Pin, RingState, State, StateStore, operator_name


def _parse_until(until: str) -> datetime:
    try:
        return parse_iso(until).astimezone(UTC)  # stored and shown in UTC, which must hold it
    except (ValueError, OverflowError):
        raise UsageError(f"--until {until!r} is not an ISO date or time",
                         hint="use e.g. 2026-12-01 or 2026-12-01T06:00:00Z") from None


def _holder(state: State, ring: str | None) -> State | RingState:
    """Where a freeze or a pin is held: the host's state, or one ring's (`--ring`)."""
    return state if ring is None else state.rings.setdefault(ring, RingState())


def _ring_data(ring: str | None) -> dict[str, str]:
    return {"ring": ring} if ring else {}


def freeze(store: StateStore, *, reason: str, for_: timedelta | None = None, until: str | None = None,
           by: str | None = None, ring: str | None = None) -> Freeze:
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
        frozen = _holder(state, ring).frozen = Freeze(reason=reason, by=by or operator_name(), at=now, until=end)
        store.save(state)
        store.record("freeze", by=frozen.by, reason=reason, until=iso(end) if end else None, **_ring_data(ring))
        return frozen


def unfreeze(store: StateStore, *, by: str | None = None, ring: str | None = None) -> Freeze | None:
    with store.lock():
        state = store.load()
        holder = _holder(state, ring)
        was, holder.frozen = holder.frozen, None
        store.save(state)
        store.record("unfreeze", by=by or operator_name(), was_frozen=was is not None,
                     frozen_reason=was.reason if was else None, **_ring_data(ring))
        return was


def pin(store: StateStore, version: str, *, reason: str, by: str | None = None, ring: str | None = None) -> Pin:
    versions.require_valid(version)
    if not reason.strip():
        raise UsageError("--reason must say why")
    with store.lock():
        state = store.load()
        denial = state.denial(version)
        if denial is not None:
            raise UsageError(f"{version} is denied ({denial.reason})",
                             hint=f"run `t3track allow {version}` first if you are sure")
        pinned = _holder(state, ring).pinned = Pin(version=version, reason=reason, by=by or operator_name(),
                                                   at=utcnow())
        store.save(state)
        store.record("pin", by=pinned.by, version=version, reason=reason, **_ring_data(ring))
        return pinned


def unpin(store: StateStore, *, by: str | None = None, ring: str | None = None) -> Pin | None:
    with store.lock():
        state = store.load()
        holder = _holder(state, ring)
        was, holder.pinned = holder.pinned, None
        store.save(state)
        store.record("unpin", by=by or operator_name(), version=was.version if was else None, **_ring_data(ring))
        return was


def deny(store: StateStore, version: str, *, reason: str, by: str | None = None) -> Denial:
    versions.require_valid(version)
    if not reason.strip():
        raise UsageError("--reason must say why")
    with store.lock():
        state = store.load()
        if version in (state.current, *(r.current for r in state.rings.values())):
            raise UsageError(f"{version} is the current version" + (" of a ring" if state.current != version else ""),
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
