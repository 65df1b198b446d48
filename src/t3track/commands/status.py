"""`t3track status`: what is current, pinned, frozen or denied, the last run, installs and backups.

Read-only: never takes the lock, never writes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from t3track.clock import iso, utcnow
from t3track.errors import T3TrackError
from t3track.host import manifest, tree, usertree
from t3track.host.t3db import DATABASES
from t3track.night import drift
from t3track.parallel import side_by_side
from t3track.results import json_key
from t3track.versions import same_version

if TYPE_CHECKING:
    from t3track.config import Config, UserConfig
    from t3track.state import Denial, Freeze, LastRun, Pending, Pin, State, StateStore


@dataclass
class UserStatus:
    name: str
    port: int
    backup_age_s: float | None
    backup_path: str | None = json_key("backup")
    database: str | None = None     # the file the user's server uses: state.sqlite, or statev2.sqlite (V2 builds)
    migration: int | None = None    # its newest migration id
    serving: str | None = None      # the serverVersion the live server reports (None: not answering)
    drift: bool = False             # it answers with another version than t3track installed (`current`)
    # on a host with rings: its ring, and the version its link (root/users/<user>) names, which its server starts
    ring: str | None = json_key("ring", omit_none=True, default=None)
    linked: str | None = json_key("linked", omit_none=True, default=None)
    # left on the old version by nights in a row because an agent was at work: {reason, since, nights, version}
    held: dict[str, object] | None = json_key("held", omit_none=True, default=None)


@dataclass
class RingStatus:
    name: str
    users: list[str]
    current: str | None             # what t3track moved the ring to
    linked: str | None              # what the ring's link names
    soak: float                     # seconds a version must serve the ring before it for this ring to take it
    soaked_s: float | None          # how long `current` has served this ring
    checked_at: str | None          # the last live re-check of its servers that passed
    pinned: Pin | None = None       # the ring's own pin and freeze (the host's are above)
    frozen: Freeze | None = None
    next: str | None = None         # a later ring: what it would take, or why it waits


@dataclass
class NightInProgress:
    """A t3track run holding the lock right now (found without taking it)."""

    pid: int
    phase: str                      # the swap journal's phase, or "before the swap"
    since: str | None               # when it took the lock (or started the swap)


@dataclass
class WindowStatus:
    """when.windows / when.blackout now: may a night swap, and if not, when the next window opens."""

    open: bool
    reason: str
    next_open: str | None           # ISO (UTC)
    next_open_local: str | None     # the same in the host's local time, as an operator reads it
    windows: list[str]
    blackout: list[str]


@dataclass
class Status:
    current: str | None
    previous: str | None
    channel: str
    package: str
    pinned: Pin | None
    frozen: Freeze | None
    denied: list[Denial]
    last_run: LastRun | None
    installed: list[str]
    users: list[UserStatus]
    current_link: str | None
    swap_in_progress: bool
    warnings: list[str] = field(default_factory=list)
    # on a host with rings: each ring, in order (no key in --json without rings)
    rings: list[RingStatus] | None = json_key("rings", omit_none=True, default=None)
    night: NightInProgress | None = None  # a run holding the lock now
    window: WindowStatus | None = json_key("window", omit_none=True, default=None)  # with when.windows/blackout
    pending: list[Pending] = field(default_factory=list)  # candidates waiting for `t3track approve`
    approval: str = "auto"                                # when.approval


def window_status(config: Config, now: datetime) -> WindowStatus | None:
    from t3track.night import windows

    when = config.when
    if not when.windows and not when.blackout:
        return None
    verdict = windows.verdict(when, now)
    return WindowStatus(verdict.open, verdict.reason, iso(verdict.next_open) if verdict.next_open else None,
                        windows.describe(verdict.next_open) if verdict.next_open else None,
                        [str(w) for w in when.windows], [str(b) for b in when.blackout])


def status(config: Config, store: StateStore) -> Status:
    """Read-only: never takes the lock, never writes. An expired freeze is shown as lifted."""
    state = store.load()
    now = utcnow()
    frozen = None if state.frozen and state.frozen.expired(now) else state.frozen
    link = tree.current_link(config)
    target = tree.current_target(config)
    warnings: list[str] = []
    if target is not None:
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
    for user, facts in zip(config.users, _gather(config)):
        newest = facts.newest
        users.append(UserStatus(user.name, user.port,
                                newest.age_s(now) if newest else None,
                                str(newest.path) if newest else None,
                                database=facts.database, migration=facts.migration, serving=facts.serving,
                                ring=config.ring_of(user.name) if config.ringed else None,
                                linked=tree.user_version(config, user.name) if config.ringed else None))
        warnings.extend(facts.warnings)
        streak = (getattr(state, "held", None) or {}).get(user.name)
        if streak is not None:
            users[-1].held = {"reason": streak.reason, "since": iso(streak.since), "nights": streak.nights,
                              "version": streak.version}
            warnings.append(f"{user.name}: held: {streak.reason} for {streak.nights} night(s) in a row (an agent "
                            f"at work at swap time), still on the old version; `t3track run --ignore-busy` moves "
                            f"{user.name} regardless")
        expected = state.current
        if config.ringed:
            ring_name = config.ring_of(user.name)
            expected = state.ring(ring_name, first=ring_name == config.first_ring).current
        drifted = users[-1].serving is not None and expected is not None \
            and not same_version(users[-1].serving, expected)
        if drifted:
            users[-1].drift = True
            warnings.append(drift.Drift(user.name, f"http://127.0.0.1:{user.port}", users[-1].serving or "",
                                        expected or "").describe())
        if config.ringed and users[-1].linked not in (None, expected):
            warnings.append(f"{user.name}'s link names {users[-1].linked}, not {expected} of ring "
                            f"{config.ring_of(user.name)}: the ring's next swap moves it")
        if newest is None:
            if not new_host:
                warnings.append(f"{user.name}: no backup yet; run `t3track backup --user {user.name}`")
        elif newest.age_s(now) > config.gates.backup_max_age.total_seconds():
            warnings.append(f"{user.name}: newest backup is older than gates.backup_max_age; "
                            f"run `t3track backup --user {user.name}`")
    night = _night(store)
    for user_status in users:
        if user_status.serving is None and not new_host and night is None:
            warnings.append(f"{user_status.name}'s server is not answering on 127.0.0.1:{user_status.port}: "
                            f"`systemctl status t3@{user_status.name}.service`")
    ring_rows = _rings(config, state, now) if config.ringed else None
    for ring in ring_rows or []:
        denial = state.denial(ring.current) if ring.current else None
        if denial is not None:  # denied in another ring (or by hand) while this one still serves it
            warnings.append(f"ring {ring.name} serves {ring.current}, which is denied ({denial.reason}): "
                            f"`t3track revert --ring {ring.name}` takes it back to its previous version")
    return Status(
        rings=ring_rows,
        current=state.current, previous=state.previous, channel=config.channel, package=config.package,
        pinned=state.pinned, frozen=frozen, denied=state.denied, last_run=state.last_run,
        installed=tree.installed_versions(config), users=users, current_link=target,
        swap_in_progress=store.journal_path.exists(), warnings=warnings, night=night,
        window=window_status(config, now), pending=list(state.pending), approval=config.when.approval,
    )


def _night(store: StateStore) -> NightInProgress | None:
    """The run holding the lock, where it is and since when; read from /proc/locks and the journal."""
    import os

    from t3track.night import journal

    pid = store.lock_holder()
    if pid is None:
        return None
    try:
        found = journal.read(store)
    except T3TrackError:
        found = None
    if found is not None:
        return NightInProgress(pid, f"swap: {found.phase.value}", iso(found.updated_at))
    try:
        since = iso(datetime.fromtimestamp(os.stat(store.dir / "lock").st_mtime, tz=UTC))
    except OSError:
        since = None
    return NightInProgress(pid, "before the swap (resolving, installing or rehearsing)", since)


def _rings(config: Config, state: State, now: datetime) -> list[RingStatus]:
    from t3track.night import rings  # a host with rings only: the night's modules stay off status's start

    out = []
    for i, ring in enumerate(config.ring_configs()):
        own = state.ring(ring.name, first=i == 0)
        open_ = own.open_stretch()
        out.append(RingStatus(
            ring.name, list(ring.users), own.current, tree.linked_version(config, tree.ring_link(config, ring.name)),
            ring.soak.total_seconds(), open_.served_for(now) if open_ else None,
            iso(own.checked_at) if own.checked_at else None, own.pinned, own.frozen,
            next=rings.promotion(config, state, ring, now).reason if i else None))
    return out


@dataclass
class _UserFacts:
    """What status reads of one user, before it is judged (drift, backup age) in the user's order."""

    newest: manifest.BackupInfo | None
    database: str | None
    migration: int | None
    serving: str | None
    warnings: list[str]


def _user_facts(config: Config, user: UserConfig) -> _UserFacts:
    warnings: list[str] = []
    database, migration = _database_of(user, warnings)
    return _UserFacts(manifest.newest_backup(config, user.name), database, migration, drift.serving(user), warnings)


def _gather(config: Config) -> list[_UserFacts]:
    """Each user's facts, the users side by side: each read waits on a child run as the tree's owner
    and on that user's server (up to drift.TIMEOUT_S when it hangs), not on the CPU. In the config's
    order; an error in any user's read is raised as it would be one after another."""
    return side_by_side(lambda user: _user_facts(config, user), config.users, max(1, len(config.users)))


def _database_of(user: UserConfig, warnings: list[str]) -> tuple[str | None, int | None]:
    """The database the user's server uses and its newest migration id, read as the tree's owner (no
    link in the user's tree is followed); a tree t3track would refuse is a warning here, never an error."""
    try:
        histories = usertree.live_histories(user.base_dir, user=user.name)
    except T3TrackError as exc:
        if not getattr(exc, "missing", False):  # no T3 state yet is no news (new_host says what to do)
            warnings.append(exc.message)
        return None, None
    database = next((name for name in DATABASES if histories.get(name)), None)
    return database, histories[database][-1].id if database else None
