"""Which version, if any, tonight's run should try: freeze, pin, then the channel's nightly.

A night where the channel has not moved costs one dist-tags request: the packument is read from
the registry only when the tag moved (or a pin needs one that is not cached).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal, Protocol

from t3track import versions
from t3track.clock import iso, utcnow
from t3track.config import Config
from t3track.errors import EnvironmentFault
from t3track.host.registry import Packument, VersionInfo
from t3track.state import Denial, Freeze, State

Action = Literal["noop", "candidate", "refused"]
Source = Literal["pin", "channel", "soaked", "exact", "ring"]


class Registry(Protocol):
    def dist_tags(self, package: str) -> dict[str, str]: ...
    def packument(self, package: str) -> Packument: ...
    def cached_packument(self, package: str) -> Packument | None: ...


@dataclass(frozen=True)
class Candidate:
    version: str
    reason: str
    source: Source
    published_at: datetime | None
    dist: VersionInfo  # what ensure_installed needs, so the caller makes no second request


@dataclass
class Decision:
    action: Action
    candidate: Candidate | None
    reason: str
    notes: list[str] = field(default_factory=list)  # every refusal considered, for dry-run
    freeze_ended: Freeze | None = None  # a freeze whose end passed, lifted by this decision


def resolve(config: Config, state: State, client: Registry, now: datetime) -> Decision:
    """Decide tonight's candidate. Updates state.first_seen in place; the caller saves the state."""
    notes: list[str] = []
    ended, frozen = _freeze(state, now, notes)
    if frozen is not None:
        return Decision("noop", None, frozen)
    decision = _resolve_pin(config, state, client, notes) if state.pinned is not None else \
        _resolve_channel(config, state, client, now, notes)
    decision.freeze_ended = ended
    return decision


def _freeze(state: State, now: datetime, notes: list[str]) -> tuple[Freeze | None, str | None]:
    """Lift a freeze whose end has passed (noted), and say why tonight is frozen if it still is."""
    ended = lift_expired_freeze(state, now)
    if ended is not None:
        notes.append(f"the freeze ({ended.reason}) ended at {iso(ended.until) if ended.until else '?'}")
    if state.frozen is None:
        return ended, None
    until = f" until {iso(state.frozen.until)}" if state.frozen.until else ""
    return ended, f"frozen{until} by {state.frozen.by}: {state.frozen.reason}"


def lift_expired_freeze(state: State, now: datetime) -> Freeze | None:
    """A freeze with an end lifts itself once the end has passed: returns the freeze it lifted."""
    if state.frozen is not None and state.frozen.expired(now):
        ended, state.frozen = state.frozen, None
        return ended
    return None


# ---------------------------------------------------------------- `run --to VERSION`: one exact target


def resolve_exact(config: Config, state: State, client: Registry, version: str, now: datetime, *,
                  allow_downgrade: bool = False) -> Decision:
    """Tonight's candidate is exactly `version`, whatever the channel says (a fleet rollout brings each
    host to the version its canary verified). The operator's holds still win: frozen is a noop, a pin
    on another version and a denial refuse. The version must be newer than current unless
    `allow_downgrade`; current already is a noop (a rollout run twice changes nothing). No soak:
    whoever names the version has decided it is old enough (on a fleet: it served the canary)."""
    versions.require_valid(version, "--to version")
    notes: list[str] = []
    current = state.current
    ended, frozen = _freeze(state, now, notes)
    if frozen is not None:
        return Decision("noop", None, f"{frozen}; {version} not taken")
    decision = _resolve_exact(config, state, client, version, current, notes, allow_downgrade)
    decision.freeze_ended = ended
    return decision


def resolve_promotion(config: Config, state: State, client: Registry, version: str | None, reason: str,
                      now: datetime) -> Decision:
    """A later ring's candidate: `version`, which the ring before it served for this ring's soak (see
    night.rings.promotion; None: nothing has, and `reason` says why). The ring's holds win as on the
    channel: frozen is a noop, a pin is followed (the operator's word needs no soak), a denial refuses."""
    notes: list[str] = []
    ended, frozen = _freeze(state, now, notes)
    if frozen is not None:
        decision = Decision("noop", None, frozen)
    elif state.pinned is not None:
        decision = _resolve_pin(config, state, client, notes)
    elif version is None:
        decision = Decision("noop", None, reason, notes)
    else:
        decision = _resolve_exact(config, state, client, version, state.current, notes, allow_downgrade=False)
        if decision.candidate is not None:
            decision = Decision("candidate", Candidate(version, reason, "ring", decision.candidate.published_at,
                                                       decision.candidate.dist), reason, notes)
    decision.freeze_ended = ended
    return decision


def _resolve_exact(config: Config, state: State, client: Registry, version: str, current: str | None,
                   notes: list[str], allow_downgrade: bool) -> Decision:
    if state.pinned is not None and state.pinned.version != version:
        return Decision("refused", None, f"pinned at {state.pinned.version} by {state.pinned.by} "
                        f"({state.pinned.reason}); `t3track unpin` before taking {version}", notes)
    denial = state.denial(version)
    if denial is not None:
        return Decision("refused", None, f"{version} is denied: {_denied(denial)}", notes)
    if version == current:
        return Decision("noop", None, f"{version} is already current", notes)
    downgrade = versions.not_newer(version, current)
    if downgrade and not allow_downgrade:
        return Decision("refused", None, f"{version} is older than current {current}; "
                        "pass --allow-downgrade to go back on purpose", notes)
    packument = client.cached_packument(config.package)
    if packument is None or version not in packument.versions:
        packument = client.packument(config.package)
    info = packument.versions.get(version)
    if info is None:
        return Decision("refused", None, f"{version} is not in the registry's {config.package} packument", notes)
    reason = (f"--to {version}" + (f", a downgrade from {current} (--allow-downgrade)" if downgrade else
                                   f", newer than current {current or '(none)'}"))
    return Decision("candidate", Candidate(version, reason, "exact", packument.time.get(version), info),
                    reason, notes)


def _resolve_pin(config: Config, state: State, client: Registry, notes: list[str]) -> Decision:
    pin = state.pinned
    assert pin is not None
    if pin.version == state.current:
        return Decision("noop", None, f"pinned at {pin.version}, which is current ({pin.reason})", notes)
    denial = state.denial(pin.version)
    if denial is not None:
        return Decision("refused", None, f"pinned version {pin.version} is denied: {_denied(denial)}", notes)
    packument = client.cached_packument(config.package)
    if packument is None or pin.version not in packument.versions:
        packument = client.packument(config.package)
    info = packument.versions.get(pin.version)
    if info is None:
        return Decision("refused", None,
                        f"pinned version {pin.version} is not in the registry's {config.package} packument", notes)
    reason = f"pinned by {pin.by}: {pin.reason}"
    return Decision("candidate", Candidate(pin.version, reason, "pin", packument.time.get(pin.version), info),
                    reason, notes)


def _resolve_channel(config: Config, state: State, client: Registry, now: datetime, notes: list[str]) -> Decision:
    channel, package, current = config.channel, config.package, state.current
    tags = client.dist_tags(package)
    tagged = tags.get(channel)
    if tagged is None:
        raise EnvironmentFault(f"the registry has no {channel!r} dist-tag for {package} "
                               f"(tags: {_quoted(', '.join(tags) or 'none', 200)})",
                               hint="check `package:` and `channel:` in the config")
    if tagged == current:
        return Decision("noop", None, f"{channel} is {tagged}, which is current", notes)
    refusal = _channel_refusal(channel, tagged, current)
    if refusal is not None:
        return Decision("refused", None, refusal, notes)

    packument = client.cached_packument(package)
    before = packument.dist_tags.get(channel) if packument is not None else None
    if before is not None and versions.is_valid(before) and versions.newer(before, tagged):
        notes.append(f"the {channel} tag moved back from {before} to {tagged} since the last look")
    if packument is None or before != tagged:
        packument = client.packument(package)  # the tag moved since the cached copy: revalidate
    if tagged not in packument.versions:
        raise EnvironmentFault(
            f"the {channel} tag points at {package}@{tagged}, which the registry's packument does not list",
            hint="the registry may be mid-publish; the next run tries again")
    _note_first_seen(state, packument, now, current)

    denial = state.denial(tagged)
    if denial is not None:
        return Decision("noop", None, f"{channel} is {tagged}, which is denied: {_denied(denial)}", notes)
    young = _too_young(tagged, packument, state, now, config.min_release_age)
    if young is None:
        reason = f"{channel} is {tagged}, newer than current {current or '(none)'}"
        return Decision("candidate", Candidate(tagged, reason, "channel", packument.time.get(tagged),
                                               packument.versions[tagged]),
                        reason, notes)
    notes.append(young)

    soaked = _newest_soaked(config, state, packument, now, below=tagged, notes=notes)
    if soaked is not None:
        reason = f"{channel} is {tagged}, too young; {soaked} is the newest soaked nightly newer than current"
        return Decision("candidate", Candidate(soaked, reason, "soaked", packument.time.get(soaked),
                                               packument.versions[soaked]),
                        reason, notes)
    return Decision("noop", None, f"{young}; no older soaked nightly is newer than current {current or '(none)'}",
                    notes)


def _quoted(text: str, limit: int = 80) -> str:
    """A registry's string in a message: repr'd and cut, so a 200 MB tag never reaches history."""
    return repr(text[:limit]) + (f"… ({len(text)} chars)" if len(text) > limit else "")


def _channel_refusal(channel: str, tagged: str, current: str | None) -> str | None:
    if len(tagged) > versions.MAX_LENGTH or not versions.is_valid(tagged):
        return f"the {channel} tag points at {_quoted(tagged)}, which is not a SemVer version"
    if not versions.is_nightly(tagged):
        kind = versions.channel_of(tagged).value
        return f"the {channel} tag points at {tagged}, a {kind} version; only nightlies are tracked"
    if versions.not_newer(tagged, current):
        return f"the {channel} tag moved backwards to {tagged}, older than current {current}; not followed"
    return None


def _too_young(version: str, packument: Packument, state: State, now: datetime, min_age: timedelta) -> str | None:
    """Why `version` has not soaked long enough, or None when it is old enough by both clocks."""
    published = packument.time.get(version)
    seen = state.first_seen.get(version, now)
    if published is not None and now - published < min_age:
        return f"{version} was published {_age(now - published)} ago, under min_release_age {_age(min_age)}"
    if now - seen < min_age:
        return f"{version} was first seen here {_age(now - seen)} ago, under min_release_age {_age(min_age)}"
    return None


def _newest_soaked(config: Config, state: State, packument: Packument, now: datetime, *, below: str,
                   notes: list[str]) -> str | None:
    """The newest nightly older than the tag, newer than current, not denied and old enough."""
    eligible = [v for v in packument.versions
                if versions.is_nightly(v) and versions.newer(below, v) and versions.newer(v, state.current)]
    for version in sorted(eligible, key=versions.sort_key, reverse=True):
        denial = state.denial(version)
        if denial is not None:
            notes.append(f"{version} is denied: {_denied(denial)}")
            continue
        young = _too_young(version, packument, state, now, config.min_release_age)
        if young is None:
            return version
        notes.append(young)
    return None


def _note_first_seen(state: State, packument: Packument, now: datetime, current: str | None) -> None:
    """Remember when this host first saw each nightly newer than current; forget older ones."""
    for version in packument.versions:
        if versions.is_nightly(version) and versions.newer(version, current):
            state.first_seen.setdefault(version, now)
    if current is not None and versions.is_valid(current):
        for version in list(state.first_seen):
            if versions.is_valid(version) and versions.compare(version, current) < 0:
                del state.first_seen[version]


def record_failure(state: State, version: str, gate: str, reason: str, evidence: str | None,
                   max_failures: int) -> bool:
    """Count a gate failure of `version`; at `max_failures` deny it with the gate and reason (True)."""
    state.failures[version] = state.failures.get(version, 0) + 1
    if state.failures[version] < max_failures or state.denial(version) is not None:
        return False
    state.denied.append(Denial(version=version, gate=gate, evidence=evidence, at=utcnow(), by="t3track",
                               reason=f"failed {gate} {state.failures[version]} times; last: {reason}"))
    return True


def _denied(denial: Denial) -> str:
    gate = f" (gate {denial.gate})" if denial.gate else ""
    return f"{denial.reason}{gate}"


def _age(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds >= 86400 and seconds % 86400 == 0:
        return f"{seconds // 86400}d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h".replace(".0h", "h")
    if seconds >= 60:
        return f"{seconds // 60}m"
    return f"{seconds}s"
