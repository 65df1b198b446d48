"""Operator actions on control state: freeze, pin, deny and their inverses.

Every change takes the run lock (a run in progress gets exit 75) and is recorded in history
with who and why. Each returns what it changed and what it replaced, so the CLI says both (and how
to undo it): a second freeze replaces the first (keeping its end unless a new one is given), a
second denial keeps the first's evidence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from t3track import versions
from t3track.clock import iso, parse_iso, utcnow
from t3track.config import Config
from t3track.errors import EnvironmentFault, UsageError
from t3track.state import Denial, Freeze, Pin, RingState, State, StateStore, operator_name


@dataclass(frozen=True)
class Froze:
    frozen: Freeze
    replaced: Freeze | None = None  # the freeze in force before; its end is kept when no new one is given


@dataclass(frozen=True)
class Pinned:
    pinned: Pin
    replaced: Pin | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Denied:
    denial: Denial
    already: bool = False  # it was denied before: that denial (gate, evidence, fingerprint) is kept


@dataclass(frozen=True)
class RegistryAnswer:
    """Whether the registry has a version: True, False, or None when it could not be asked (`problem`)."""

    known: bool | None
    problem: str | None = None


def registry_has(config: Config, version: str) -> RegistryAnswer:
    """Ask the registry once, quickly (no retries): an operator waits for the answer."""
    from t3track.host.registry import RegistryClient

    try:
        with RegistryClient.for_config(config, retries=0, timeout=5.0) as client:
            return RegistryAnswer(version in client.packument(config.package).versions)
    except EnvironmentFault as exc:
        return RegistryAnswer(None, exc.message)


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
           by: str | None = None, ring: str | None = None) -> Froze:
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
        holder = _holder(state, ring)
        replaced = holder.frozen if holder.frozen is not None and not holder.frozen.expired(now) else None
        if end is None and replaced is not None:
            end = replaced.until  # a new reason does not silently make a freeze endless
        frozen = holder.frozen = Freeze(reason=reason, by=by or operator_name(), at=now, until=end)
        store.save(state)
        store.record("freeze", by=frozen.by, reason=reason, until=iso(end) if end else None, **_ring_data(ring),
                     **({"replaced": f"{replaced.by}: {replaced.reason}"} if replaced else {}))
        return Froze(frozen, replaced)


def unfreeze(store: StateStore, *, by: str | None = None, ring: str | None = None) -> Freeze | None:
    with store.lock():
        state = store.load()
        holder = _holder(state, ring)
        was, holder.frozen = holder.frozen, None
        store.save(state)
        store.record("unfreeze", by=by or operator_name(), was_frozen=was is not None,
                     frozen_reason=was.reason if was else None, **_ring_data(ring))
        return was


def pin(store: StateStore, version: str, *, reason: str, by: str | None = None, ring: str | None = None,
        registry: RegistryAnswer | None = None) -> Pinned:
    """`registry`: whether the registry has `version` (a pin it does not have would refuse every night)."""
    versions.require_valid(version)
    if not reason.strip():
        raise UsageError("--reason must say why")
    warnings = []
    if registry is not None and registry.known is False:
        raise UsageError(f"{version} is not in the registry; nothing changed",
                         hint="check the version (`npm view PACKAGE versions`); every night would refuse this pin")
    if registry is not None and registry.known is None:
        warnings.append(f"the registry could not be asked whether it has {version} ({registry.problem}); "
                        "pinned anyway: a night refuses it if it is not there")
    with store.lock():
        state = store.load()
        denial = state.denial(version)
        if denial is not None:
            raise UsageError(f"{version} is denied ({denial.reason})",
                             hint=f"run `t3track allow {version}` first if you are sure")
        holder = _holder(state, ring)
        current = holder.current if isinstance(holder, RingState) and holder.current else state.current
        if current != version and versions.not_newer(version, current):
            warnings.append(f"{version} is older than current {current}: the next `t3track run` downgrades to it")
        replaced = holder.pinned
        pinned = holder.pinned = Pin(version=version, reason=reason, by=by or operator_name(), at=utcnow())
        store.save(state)
        store.record("pin", by=pinned.by, version=version, reason=reason, **_ring_data(ring),
                     **({"replaced": replaced.version} if replaced else {}))
        return Pinned(pinned, replaced, warnings)


def unpin(store: StateStore, *, by: str | None = None, ring: str | None = None) -> Pin | None:
    with store.lock():
        state = store.load()
        holder = _holder(state, ring)
        was, holder.pinned = holder.pinned, None
        store.save(state)
        store.record("unpin", by=by or operator_name(), version=was.version if was else None, **_ring_data(ring))
        return was


def deny(store: StateStore, version: str, *, reason: str, by: str | None = None) -> Denied:
    versions.require_valid(version)
    if not reason.strip():
        raise UsageError("--reason must say why")
    with store.lock():
        state = store.load()
        serving = sorted(name for name, r in state.rings.items() if r.current == version)
        if serving and state.current != version:  # name the ring: a plain `revert` asks which one
            raise UsageError(f"{version} is the current version of ring {', '.join(serving)}",
                             hint=f"`t3track revert --ring {serving[0]}` leaves it; revert denies it for you")
        if version == state.current:
            raise UsageError(f"{version} is the current version",
                             hint="use `t3track revert` (with --ring on a host with rings) to leave it; "
                             "revert denies it for you")
        who = by or operator_name()
        already = state.denial(version)
        if already is not None:  # keep the first denial: its gate, evidence and fingerprint say why
            store.record("deny", by=who, version=version, reason=reason, already_denied=True)
            return Denied(already, already=True)
        denial = Denial(version=version, reason=reason, gate=None, at=utcnow(), by=who)
        state.denied.append(denial)
        store.save(state)
        store.record("deny", by=denial.by, version=version, reason=reason)
        return Denied(denial)


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
