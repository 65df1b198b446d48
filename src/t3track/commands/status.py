"""`t3track status`: what is current, pinned, frozen or denied, the last run, installs and backups.

Read-only: never takes the lock, never writes."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from t3track.clock import utcnow
from t3track.errors import T3TrackError
from t3track.host import backup, tree, usertree
from t3track.host.sqlite import DATABASES
from t3track.night import drift
from t3track.results import json_key
from t3track.versions import same_version

if TYPE_CHECKING:  # status reads them through t3track.fastread (see cli.inspect): no pydantic at start
    from t3track.config import Config, UserConfig
    from t3track.state import Denial, Freeze, LastRun, Pin, StateStore


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
                                database=facts.database, migration=facts.migration, serving=facts.serving))
        warnings.extend(facts.warnings)
        drifted = users[-1].serving is not None and state.current is not None \
            and not same_version(users[-1].serving, state.current)
        if drifted:
            users[-1].drift = True
            warnings.append(drift.Drift(user.name, f"http://127.0.0.1:{user.port}", users[-1].serving or "",
                                        state.current or "").describe())
        if newest is None:
            if not new_host:
                warnings.append(f"{user.name}: no backup yet; run `t3track backup --user {user.name}`")
        elif newest.age_s(now) > config.gates.backup_max_age.total_seconds():
            warnings.append(f"{user.name}: newest backup is older than gates.backup_max_age; "
                            f"run `t3track backup --user {user.name}`")
    return Status(
        current=state.current, previous=state.previous, channel=config.channel, package=config.package,
        pinned=state.pinned, frozen=frozen, denied=state.denied, last_run=state.last_run,
        installed=tree.installed_versions(config), users=users, current_link=target,
        swap_in_progress=store.journal_path.exists(), warnings=warnings,
    )


@dataclass
class _UserFacts:
    """What status reads of one user, before it is judged (drift, backup age) in the user's order."""

    newest: backup.BackupInfo | None
    database: str | None
    migration: int | None
    serving: str | None
    warnings: list[str]


def _user_facts(config: Config, user: UserConfig) -> _UserFacts:
    warnings: list[str] = []
    database, migration = _database_of(user, warnings)
    return _UserFacts(backup.newest_backup(config, user.name), database, migration, drift.serving(user), warnings)


def _gather(config: Config) -> list[_UserFacts]:
    """Each user's facts, the users side by side: each read waits on a child run as the tree's owner
    and on that user's server (up to drift.TIMEOUT_S when it hangs), not on the CPU. In the
    config's order; an error in any user's read is raised as it would be one after another."""
    if len(config.users) < 2:
        return [_user_facts(config, user) for user in config.users]
    results: list[_UserFacts | BaseException | None] = [None] * len(config.users)

    def read(i: int, user: UserConfig) -> None:
        try:
            results[i] = _user_facts(config, user)
        except BaseException as exc:  # handed to the caller's thread below
            results[i] = exc

    threads = [threading.Thread(target=read, args=(i, user), daemon=True) for i, user in enumerate(config.users)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return [r for r in results if isinstance(r, _UserFacts)]


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
