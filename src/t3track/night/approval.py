"""`when.approval: manual`: a candidate that passed every gate waits in state.json (`pending`) until an
operator runs `t3track approve` (or `reject`). One pending candidate per ring move (the whole host's
without rings, ring None). Always read and written through the host's store: a ring's view saves
`pending` back as it loaded it, so none is held across a change here."""

from __future__ import annotations

from datetime import datetime

from t3track import versions
from t3track.clock import human_age, iso
from t3track.config import Config
from t3track.errors import UsageError
from t3track.results import GateResult
from t3track.state import Denial, Pending, State, StateStore, operator_name


def fresh(pending: Pending, config: Config, now: datetime) -> bool:
    """Its gates passed within when.approval_max_age: `approve` swaps without running them again."""
    return now - pending.gates_passed_at <= config.when.approval_max_age


def leave_pending(config: Config, store: StateStore, *, ring: str | None, version: str, current: str | None,
                  run_id: str, evidence: str | None, gates: list[GateResult], now: datetime) -> Pending:
    """Record `version` as the ring's pending candidate (its gates passed now); replaces an older one."""
    host = store.host
    state = host.load()
    before = state.pending_for(ring)
    pending = Pending(version=version, ring=ring, since=before.since if before and before.version == version else now,
                      gates_passed_at=now, from_version=current, run_id=run_id, evidence=evidence,
                      gates=[f"{g.name}:{g.user}:{g.outcome}" for g in gates])
    state.pending = [p for p in state.pending if p.ring != ring] + [pending]
    host.save(state)
    return pending


def reason_for(pending: Pending, *, replaced: str | None = None) -> str:
    where = f" for ring {pending.ring}" if pending.ring else ""
    swap = f"{pending.from_version or 'nothing'} -> {pending.version}"
    return (f"every gate passed; {swap} is pending approval{where} since {iso(pending.since)}: run "
            f"`{pending.approve_command()}` to swap it, or `t3track reject {pending.version} --reason TEXT`"
            + (f" (it replaces {replaced}, pending before)" if replaced and replaced != pending.version else ""))


def _ring_current(config: Config, state: State, ring: str | None) -> str | None:
    if ring is None:
        return state.current
    return state.ring(ring, first=ring == config.host.first_ring).current


def prune(config: Config, store: StateStore) -> list[str]:
    """Forget pending candidates that can no longer be approved: denied, no longer newer than what their
    ring runs, a ring the config no longer names, or approval switched back to auto. Returns why each went."""
    host = store.host
    state = host.load()
    config = config.host
    kept, gone = [], []
    for pending in state.pending:
        current = _ring_current(config, state, pending.ring)
        if config.when.approval != "manual":
            gone.append(f"{pending.version} is no longer pending: when.approval is {config.when.approval}")
        elif state.denial(pending.version) is not None:
            gone.append(f"{pending.version} is no longer pending: it is denied")
        elif pending.ring is not None and (not config.ringed or pending.ring not in config.ring_names()):
            gone.append(f"{pending.version} is no longer pending: the config names no ring {pending.ring}")
        elif versions.not_newer(pending.version, current):
            gone.append(f"{pending.version} is no longer pending: {pending.ring or 'the host'} runs {current}")
        else:
            kept.append(pending)
    if gone:
        state.pending = kept
        host.save(state)
    return gone


def drop(store: StateStore, ring: str | None) -> None:
    host = store.host
    state = host.load()
    if state.pending_for(ring) is not None:
        state.pending = [p for p in state.pending if p.ring != ring]
        host.save(state)


def choose(config: Config, state: State, version: str | None, ring: str | None) -> Pending:
    """The pending candidate `approve [VERSION] [--ring R]` means; a UsageError (exit 2) says why none."""
    if version is not None:
        versions.require_valid(version, "version")
    if ring is not None:
        config.require_ring(ring)
    found = [p for p in state.pending if (version is None or p.version == version) and (ring is None or p.ring == ring)]
    listed = "; ".join(f"`{p.approve_command()}`" for p in state.pending) or "none"
    if not found:
        what = " ".join(x for x in (version, f"for ring {ring}" if ring else None) if x) or "candidate"
        raise UsageError(f"no {what} is pending approval (pending: {listed})",
                         hint="`t3track status` shows what is pending; a night with when.approval: manual "
                         "leaves a candidate pending once every gate passed")
    if len(found) > 1:
        raise UsageError(f"more than one candidate is pending ({listed}): say which with VERSION and --ring")
    return found[0]


def age_note(pending: Pending, config: Config, now: datetime) -> str:
    age = human_age((now - pending.gates_passed_at).total_seconds())
    limit = human_age(config.when.approval_max_age.total_seconds())
    if fresh(pending, config, now):
        return (f"approved by {operator_name()}: its gates passed {age} ago (run {pending.run_id}), within "
                f"when.approval_max_age {limit}: not run again")
    return (f"approved by {operator_name()}: its gates passed {age} ago, older than when.approval_max_age {limit}: "
            "they run again first")


def reject(config: Config, store: StateStore, version: str, *, reason: str, by: str | None, now: datetime) -> Denial:
    """`t3track reject VERSION --reason`: deny the pending candidate (every ring's) and forget it."""
    versions.require_valid(version)
    if not reason.strip():
        raise UsageError("--reason must say why")
    with store.lock():
        state = store.load()
        if not any(p.version == version for p in state.pending):
            listed = ", ".join(p.version for p in state.pending) or "none"
            raise UsageError(f"{version} is not pending approval (pending: {listed})",
                             hint=f"`t3track deny {version} --reason TEXT` denies any version")
        who = by or operator_name()
        denial = Denial(version=version, reason=f"rejected by {who}: {reason}", gate="approval", at=now, by=who)
        state.denied = [d for d in state.denied if d.version != version] + [denial]
        state.pending = [p for p in state.pending if p.version != version]
        store.save(state)
        store.record("reject", by=who, version=version, reason=reason)
        return denial
