"""Rings: some users first, the rest after a soak.

A ring is a set of users that move together (config `rings`; without it, one ring of every user).
A ring's move is the night's ordinary move, run on the ring's view: `Config.ring_view` (its users,
its `current` link) and a `RingStore` (its current, previous, pin and freeze). So the gates, the swap,
the journal, recovery and the bookkeeping are one code path for one ring or five.

Each night, in order: the earlier rings' live servers are re-checked while a version soaks there
(a failure rolls that ring back and denies the version for all rings); then at most one ring moves,
the last ring first (promoting a version that has proved itself), the first ring (the channel) last.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from t3track import versions
from t3track.clock import human_age, utcnow
from t3track.config import Config, RingConfig
from t3track.errors import CriticalError, T3TrackError, UsageError
from t3track.host import tree
from t3track.night.verify import verify_live
from t3track.results import GateResult
from t3track.state import RING_OWN, HistoryEvent, RingState, Served, State, StateStore, note_served

Progress = Callable[[str], None]
LIVE_RECHECK = "live-recheck"


class RingStore(StateStore):
    """state_dir seen by one ring's move. `load()` gives a State whose current, previous and
    current_snapshot are the ring's, and whose pin and freeze are the ring's own or else the host's,
    so every move (swap, rollback, revert, recovery) settles the ring it moved through the same code
    as a host without rings; `save()` writes those back into the ring and everything else (denials,
    failures, first-seen times, the last run) into the host's state. A change of the ring's current
    opens a new `served` stretch. History lines name the ring."""

    def __init__(self, state_dir: Path, ring: str, *, first: bool):
        super().__init__(state_dir)
        self.ring, self.first = ring, first
        self._held: dict[str, tuple[str, Any]] = {}  # pinned/frozen: where the loaded value came from
        self._loaded_current: str | None = None

    def load(self) -> State:
        """The ring's view. Its freeze is its own, else the host's (a ring's freeze that has ended gives
        way to a host freeze still on). Its pin is its own; the first ring also takes the host's pin
        (the host's pin reaches later rings through their soak: see night.rings.promotion)."""
        whole = super().load()
        own = whole.rings.get(self.ring, RingState())
        view = whole.model_copy(deep=True)
        if not self.first:
            for key in RING_OWN:
                setattr(view, key, getattr(own, key))
            if own.current is None:  # a ring that has not moved yet runs what the whole host ran (its link's start)
                view.current = whole.current
        mine = own.frozen
        if mine is not None and mine.expired(utcnow()) and whole.frozen is not None:
            mine = None
        view.frozen = mine if mine is not None else whole.frozen
        self._held["frozen"] = ("ring" if mine is not None else "host", view.frozen)
        view.pinned = own.pinned if own.pinned is not None or not self.first else whole.pinned
        self._held["pinned"] = ("ring" if own.pinned is not None or not self.first else "host", view.pinned)
        self._loaded_current = view.current
        return view

    def save(self, state: State) -> None:
        whole = super().load()
        own = whole.rings.setdefault(self.ring, RingState())
        before = self._loaded_current
        for key in State.model_fields:
            if key in ("pinned", "frozen", "rings") or (key in RING_OWN and not self.first):
                continue
            setattr(whole, key, getattr(state, key))
        if not self.first:
            for key in RING_OWN:
                setattr(own, key, getattr(state, key))
        for key in ("pinned", "frozen"):
            where, loaded = self._held.get(key, ("host", getattr(whole, key)))
            value = getattr(state, key)
            if value == loaded:
                continue
            # a value this move changed: lifted where it was held; a new freeze (a failed rollback) is the host's
            setattr(own if where == "ring" and value is None else whole, key, value)
            self._held[key] = (where if value is None else "host", value)
        if state.current != before:
            note_served(own, state.current, utcnow())
        self._loaded_current = state.current
        StateStore.save(self, whole)

    @property
    def host(self) -> StateStore:
        return StateStore(self.dir)

    def record(self, event: str, *, by: str | None = None, **data: Any) -> HistoryEvent:
        data.setdefault("ring", self.ring)
        return super().record(event, by=by, **data)


def scope(config: Config, store: StateStore, ring: str | None) -> tuple[Config, StateStore]:
    """The view one ring's move runs in (the whole host when there are no rings or `ring` is None)."""
    if ring is None:
        return config, store
    try:
        if not config.ringed:
            raise T3TrackError("no rings")
        view = config.ring_view(ring)
    except T3TrackError:
        raise CriticalError(f"a move of ring {ring!r} was interrupted, and the config no longer names that ring",
                            hint=f"put ring {ring} back into the config until `t3track run` has recovered it "
                            f"(see {store.journal_path})") from None
    return view, RingStore(store.dir, ring, first=ring == config.first_ring)


def for_operator(config: Config, store: StateStore, ring: str | None, what: str) -> tuple[Config, StateStore]:
    """The view an operator's move (`revert`, `drill`) runs in: on a host with rings, the ring named
    with --ring, which it must be given; without rings, the whole host (a --ring must name its ring)."""
    if ring is not None:
        config.require_ring(ring)
    if not config.ringed:
        return config, store
    if ring is None:
        raise UsageError(f"this host has rings ({', '.join(config.ring_names())}): say which one to {what} "
                         "with --ring", hint="`t3track status` shows each ring's version")
    return scope(config, store, ring)


def ensure(config: Config, store: StateStore, progress: Progress) -> None:
    """A host on today's single link gains the per-user (and per-ring) links by itself, and each ring
    its record: a later ring starts on the version its link names, and every ring's `served` stretch
    starts now (a soak is measured from when t3track saw the version serve the ring)."""
    for made in tree.ensure_layout(config):
        progress(f"layout: made {made}")
    if not config.ringed:
        return
    state = store.load()
    now = utcnow()
    changed = False
    for i, ring in enumerate(config.ring_configs()):
        own = state.rings.setdefault(ring.name, RingState())
        if i and own.current is None:
            own.current = tree.linked_version(config, tree.ring_link(config, ring.name))
            changed = changed or own.current is not None
        current = state.ring(ring.name, first=i == 0).current
        if current is not None and state.ring(ring.name, first=i == 0).open_stretch() is None:
            own.served.append(Served(version=current, since=now))
            changed = True
    if changed:
        store.save(state)


def ring_current(state: State, config: Config, ring: str) -> str | None:
    return state.ring(ring, first=ring == config.first_ring).current


@dataclass(frozen=True)
class Promotion:
    version: str | None
    reason: str


def soak_slack(soak: float) -> float:
    """How much short of its soak a stretch may be: the nightly timer fires at the same time each night,
    and a swap commits a few minutes into the run, so a 24h soak measured to the second would wait a
    second night. An hour for a day's soak (a 24th of it), never more."""
    return min(soak / 24, 3600.0)


def promotion(config: Config, state: State, ring: RingConfig, now: datetime, *, only: str | None = None) -> Promotion:
    """The version `ring` (a later ring) should take: the newest the ring before it served for `soak`
    (less soak_slack; a stretch still open or one a newer version ended; a denied version never
    counts), newer than what `ring` runs; with `only` (the host's pin), that version alone. Else why not."""
    names = config.ring_names()
    earlier = names[names.index(ring.name) - 1]
    mine = ring_current(state, config, ring.name)
    served = state.rings.get(earlier, RingState()).served
    denied = {d.version for d in state.denied}
    newer = [s for s in served if s.version not in denied and (only is None or s.version == only)
             and (mine is None or (versions.is_valid(mine) and versions.newer(s.version, mine)))]
    soak = ring.soak.total_seconds()
    soaked = [s for s in newer if s.served_for(now) >= soak - soak_slack(soak)]
    if soaked:
        best = max(soaked, key=lambda s: versions.sort_key(s.version))
        return Promotion(best.version, f"{best.version} served {earlier} for {human_age(best.served_for(now))} "
                         f"(soak {human_age(soak)}), newer than {mine or 'nothing'}")
    if newer:
        last = max(newer, key=lambda s: s.since)
        left = soak - soak_slack(soak) - last.served_for(now)
        return Promotion(None, f"{last.version} has served {earlier} for {human_age(last.served_for(now))} of "
                         f"its {human_age(soak)} soak ({human_age(left)} to go)")
    pinned = f" (the host is pinned at {only})" if only else ""
    return Promotion(None, f"nothing newer than {mine or 'nothing'} has served {earlier}{pinned}")


def soaking(config: Config, state: State) -> list[str]:
    """Earlier rings whose version a later ring does not run yet: their servers are re-checked nightly."""
    names = config.ring_names()
    return [ring for ring, after in zip(names, names[1:], strict=False)
            if ring_current(state, config, ring) not in (None, ring_current(state, config, after))]


def recheck(view: Config, ring_store: StateStore, progress: Progress, *, dry_run: bool = False) -> list[GateResult]:
    """Re-check one ring's live servers (its view: see `scope`; serverVersion and the pairing probe) on
    the version it runs; a pass is remembered as the ring's `checked_at` (not by a dry run)."""
    state = ring_store.load()
    if state.current is None or view.ring is None:
        return []
    # a user held on another version (moved into this ring, not swapped in yet) is not this version's to judge
    on_it = [u for u in view.users if tree.user_version(view, u.name) in (state.current, None)]
    progress(f"re-checking ring {view.ring} live on {state.current}")
    results = verify_live(view, state.current, progress, gate=LIVE_RECHECK, users=on_it)
    if all(r.outcome == "pass" for r in results) and not dry_run:
        whole = ring_store.host.load()
        whole.rings.setdefault(view.ring, RingState()).checked_at = utcnow()
        ring_store.host.save(whole)
    return results
