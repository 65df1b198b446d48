"""The swap: stop, snapshot, flip `root/current`, start, verify live; roll back by itself on failure.

Each phase is written to the journal before it starts, so recovery can finish or undo a swap that
was killed at any moment. The rollback restores the pre-swap snapshots when the candidate migrated
a database, because an older binary on a newer database hides or fails to read data.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from t3track import stops
from t3track.clock import utcnow
from t3track.config import Config, UserConfig
from t3track.errors import CriticalError, EnvironmentFault, Interrupted, T3TrackError
from t3track.fsutil import ensure_private_dir
from t3track.host import backup, busy, restore, serving, sqlite, usertree
from t3track.host.manifest import MANIFEST, read_backup
from t3track.host.services import RefusedStart, UserMark, each_user, refused_starts
from t3track.host.sqlite import added, migration_history
from t3track.host.t3db import DB_FILES, MAIN_DB, V2_DB
from t3track.host.tree import current_version, flip_current, prefix_of
from t3track.night import drift
from t3track.night import journal as jr
from t3track.night.journal import Journal, Phase, RollbackCause
from t3track.night.verify import verify_live
from t3track.parallel import serialised, side_by_side
from t3track.results import ROLLBACK_VERIFY, GateResult
from t3track.state import Freeze, State, StateStore
from t3track.versions import same_version

Progress = Callable[[str], None]
SNAPSHOT_MARGIN = 1.2        # a snapshot is at most its database (and WAL); a little room on top
SNAPSHOT_SLACK = 16 << 20    # manifests, the journal, history
# Each pre-swap snapshot is taken while that user's server is down: a database someone holds locked
# must not keep every user down until the unit's timeout (faults review H2). Its expiry is a host
# fault: every server is started again on the old version and the candidate is not blamed.
SNAPSHOT_TIMEOUT = timedelta(minutes=2)


def _quiet(_: str) -> None:
    pass


@dataclass
class SwapResult:
    outcome: str                       # swapped | rolled_back | critical | held (nothing stopped: users at work)
    from_version: str | None
    to_version: str
    reason: str = ""
    live: list[GateResult] = field(default_factory=list)
    rollback_live: list[GateResult] = field(default_factory=list)
    restored_users: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    marks: list[UserMark] = field(default_factory=list)  # when each user's server stopped, started, verified
    notes: list[str] = field(default_factory=list)       # e.g. a stop that returned before the server exited
    interrupted: str | None = None     # the stop signal that arrived during the swap (SIGTERM), if one did
    host_fault: bool = False           # a step failed before the flip: the candidate never ran, not its fault
    held: list[busy.BusyUser] = field(default_factory=list)  # outcome held: who was still at work
    # a server that refused to start because of the host's state (0.1.x): the host's problem, not the candidate's
    refused_start: list[RefusedStart] = field(default_factory=list)


# ---------------------------------------------------------------- snapshots


def _snapshotter(snapshot_dir: Path, progress: Progress) -> Callable[[UserConfig], None]:
    """A pre-swap snapshot of one user's database (a child run as the tree's owner), into snapshot_dir."""
    def one(user: UserConfig) -> None:
        ensure_private_dir(snapshot_dir)  # idempotent: whichever user comes first makes it
        dest = snapshot_dir / user.name
        if (dest / MANIFEST).is_file():
            return  # a resumed swap keeps the snapshot taken before it was killed
        if not any(os.path.lexists(user.base_dir / "userdata" / name) for name in DB_FILES):
            # a new host (adopt): nobody has served T3 here yet; the server creates its state on start
            progress(f"{user.name} has no T3 state yet: nothing to snapshot")
            return
        progress(f"snapshot {user.name}'s database")
        backup.snapshot_database(user.base_dir, dest, timeout=SNAPSHOT_TIMEOUT)

    return one


def _stop_and_snapshot_all(config: Config, snapshot_dir: Path, progress: Progress, result: SwapResult) -> None:
    """Stop every server, and snapshot each database as soon as its own server has exited, on workers
    of their own (at most gates.parallel, like the stops): the stops (waits on the service manager and
    on the old process) go on meanwhile, instead of the snapshots (a child each, CPU) waiting for the
    last stop. A failed stop is raised first, once every snapshot under way has returned; else the
    first failed snapshot in config order (every server was stopped, as when they came after)."""
    say = serialised(progress)
    snapshot = _snapshotter(snapshot_dir, say)
    taken: dict[str, Future[None]] = {}
    with ThreadPoolExecutor(max_workers=max(1, config.gates.parallel), thread_name_prefix="t3track-snapshot") as pool:
        each_user(config, "stop", say, marks=result.marks, notes=result.notes,
                  then=lambda user: taken.__setitem__(user.name, pool.submit(snapshot, user)))
    for user in config.users:
        if user.name in taken:
            taken[user.name].result()


def _restore_from(config: Config, snapshot_dir: Path, *, only_if_migrated: bool, progress: Progress,
                  problems: list[str] | None = None) -> list[str]:
    """Restore each user's database from the snapshots in `snapshot_dir`: always, or only when the
    live database carries migrations the snapshot lacks (the candidate migrated it forward).

    With `problems`, a user whose restore fails is noted there and the others are still restored."""
    restored = []
    for user in config.users:
        snap = snapshot_dir / user.name
        if not (snap / MANIFEST).is_file():
            continue  # killed before this snapshot completed: the candidate never touched this database
        userdata = user.base_dir / "userdata"
        if only_if_migrated and not _migrated(snap, user):
            continue
        progress(f"restore {user.name}'s database from {snap}")
        try:
            restore.restore_database(read_backup(snap, user.name), userdata)
        except (T3TrackError, OSError) as exc:
            if problems is None:
                raise
            problems.append(f"restore of {user.name}'s database from {snap} failed: {exc}")
            continue
        # A statev2.sqlite the snapshot lacks (the candidate crossed to V2) was moved aside by the restore,
        # never deleted: the old version reads state.sqlite, exactly as it was before the swap.
        restored.append(user.name)
    return restored


def _migrated(snap: Path, user: UserConfig) -> bool:
    """Did the candidate move either database forward (or create statev2)? Migrations are compared as
    (id, name) pairs: one recorded under another name is a change too. The live databases are read with
    the owner's rights, never through a link. Unreadable counts as yes: restoring a snapshot taken a
    moment ago loses less than running the old binary on an unknown schema."""
    try:
        live = usertree.live_histories(user.base_dir, user=user.name)
    except T3TrackError:
        return True
    for name in DB_FILES:
        if name not in live:
            continue
        saved = snap / name
        if not saved.exists():
            return True
        try:
            if added(migration_history(saved), live[name]):
                return True
        except (T3TrackError, OSError):
            return True
    return False


def migrated_forward(user: str, snapshot: Path, base_dir: Path, target: str) -> list[str]:
    """What `target` would find changed since the pre-swap snapshot, per database file: migrations it
    did not know (as (id, name) pairs, in statev2.sqlite as in state.sqlite), or a statev2.sqlite the
    current version created, which `target` (a V1 build) never reads. The live databases are read as
    their owner: no link in the user's tree is followed."""
    try:
        live = usertree.live_histories(base_dir, user=user)
    except T3TrackError as exc:
        return [f"{user}: cannot compare the databases with the pre-swap snapshot: {exc.message}"]
    warnings = []
    for name in DB_FILES:
        saved = snapshot / name
        if name not in live:
            continue
        if not saved.is_file():
            if name == V2_DB:
                warnings.append(f"{user}'s data since the swap is in {V2_DB}, which {target} does not read: "
                                f"{target} reads {MAIN_DB}, frozen since the swap, so users would not see what "
                                f"they did since (use --restore-state to go back to the pre-swap database "
                                f"exactly; {V2_DB} is moved aside, not deleted)")
            continue
        now = live[name]
        try:
            since = sqlite.added(sqlite.migration_history(saved), now)
        except T3TrackError as exc:
            warnings.append(f"{user}: cannot compare {name} with the pre-swap snapshot: {exc.message}")
            continue
        if since:
            warnings.append(f"{user}'s {name} has migrations up to {now[-1].id}, with "
                            f"{', '.join(m.label for m in since)} that {target} did not know; {target} may hide "
                            f"or fail to read data (use --restore-state to go back to the pre-swap database)")
    return warnings


def migrated_forward_all(config: Config, state: State, target: str) -> list[str]:
    """migrated_forward for every user of this view, against the snapshots taken just before the swap
    into the current version (none kept: nothing to compare, no warning)."""
    snapshot = Path(state.current_snapshot) if state.current_snapshot else None
    if snapshot is None or not snapshot.is_dir():
        return []
    return [w for user in config.users for w in migrated_forward(user.name, snapshot / user.name, user.base_dir,
                                                                   target)]


def preflight(config: Config, store: StateStore, plan: Journal | None = None) -> None:
    """What must hold before any server stops: the version a rollback goes back to is installed with
    its executable, every user's tree is one t3track will touch (no link, regular databases of its
    owner's), no two users share one, and state_dir has room for every snapshot. Raises
    EnvironmentFault (exit 3), nothing stopped, naming the version, the user or the disk."""
    def read(user: UserConfig) -> tuple[usertree.Tree, int] | None:
        try:
            tree = usertree.check_tree(user.base_dir, user=user.name)
        except usertree.UserTreeFault as exc:
            if exc.missing:
                return None  # a new host (adopt): no T3 state yet, nothing to snapshot (see _snapshotter)
            raise
        return tree, usertree.db_sizes(user.base_dir, user=user.name)

    seen: dict[tuple[int, int], str] = {}
    need = 0
    for user, found in zip(config.users, side_by_side(read, config.users, config.gates.parallel), strict=True):
        if found is None:
            continue
        tree, size = found
        other = seen.setdefault((tree.dev, tree.ino), user.name)
        if other != user.name:
            raise usertree.UserTreeFault(user.name, f"{tree.userdata} is the same directory as {other}'s userdata",
                                         hint=f"give {user.name} and {other} base dirs of their own")
        need += size
    if plan is not None and plan.from_version is not None:
        back = config.executable_in(prefix_of(config, plan.from_version))
        if not os.path.isfile(back) or not os.access(back, os.X_OK):
            raise EnvironmentFault(
                f"the version a rollback would go back to, {plan.from_version}, has no executable at {back}; "
                f"nothing was stopped", hint=f"reinstall it first: `t3track revert --to {plan.from_version}` "
                f"is refused too; `t3track adopt` or restoring {prefix_of(config, plan.from_version)} brings it back")
    store.ensure()
    fs = os.statvfs(store.dir)
    free = fs.f_bavail * fs.f_frsize
    wanted = int(need * SNAPSHOT_MARGIN) + SNAPSHOT_SLACK
    if free < wanted:
        raise EnvironmentFault(
            f"state_dir {store.dir} has {free // 1024} KiB free; the pre-swap snapshots of "
            f"{len(config.users)} user(s) need about {wanted // 1024} KiB; nothing was stopped",
            hint="free space on state_dir's filesystem (or move state_dir), then run again")


def _failed(results: list[GateResult]) -> GateResult | None:
    return next((r for r in results if r.outcome != "pass"), None)


# ---------------------------------------------------------------- swap and rollback


def swap_and_verify(config: Config, store: StateStore, plan: Journal, progress: Progress = _quiet, *,
                    ignore_busy: bool = False) -> SwapResult:
    """Move every server along `plan` (a journal in phase PLANNED) and verify it live; roll back by
    itself if a step or the live check fails. The plan is written before anything is touched.

    A plan with `simulate_live_failure` (the drill) treats a passing live check as failed, so the
    whole rollback path runs for real. A tree or a disk that would make the swap fail halfway is
    refused first (EnvironmentFault, nothing stopped): see `preflight`. A user whose agent is at work
    is waited for (config.swap.busy_wait); one still at work then holds the whole move (outcome
    `held`: nothing stopped, no journal), unless `ignore_busy`."""
    preflight(config, store, plan)
    check = busy.wait_until_idle(config, progress, wait=not ignore_busy)
    if check.held and not ignore_busy:
        names = ", ".join(b.describe() for b in check.held)
        return SwapResult("held", plan.from_version, plan.to_version, reason=f"held: busy: {names} still at work "
                          f"after {check.waited_s:.0f}s; nothing was stopped, {plan.to_version} stays eligible",
                          notes=check.notes, held=check.held, timings={"busy_wait_s": check.waited_s})
    before = _protocols(config)
    with stops.shielded():  # a signal from here on is seen by drive(), which removes the plan if nothing moved
        jr.write(store, plan, Phase.PLANNED)
        result = drive(config, store, plan, progress)
    result.notes[:0] = check.notes + [f"--ignore-busy: stopped {b.describe()} mid-work" for b in check.held]
    result.notes += protocol_changes(before, result.live, plan.from_version, plan.to_version) \
        if result.outcome == "swapped" else []
    result.timings["busy_wait_s"] = check.waited_s
    return result


def _protocols(config: Config) -> dict[str, int]:
    """Each serving user's orchestrationProtocolVersion before the swap (what its clients speak now)."""
    found = side_by_side(lambda u: serving.protocol_version(f"http://127.0.0.1:{u.port}", timeout=2.0), config.users,
                         config.gates.parallel)
    return {user.name: seen for user, seen in zip(config.users, found, strict=True) if seen is not None}


def protocol_changes(before: dict[str, int], live: list[GateResult], from_version: str | None,
                     to_version: str) -> list[str]:
    """A swap that changed the orchestration protocol a user's server speaks: clients on the old one break
    (t3code-contract.md, "T3 Code 0.1.x"), so the report says so, per protocol change."""
    changed: dict[tuple[int, int], list[str]] = {}
    for result in live:
        old = before.get(result.user)
        if result.passed and result.protocol is not None and old is not None and old != result.protocol:
            changed.setdefault((old, result.protocol), []).append(result.user)
    return [f"orchestration protocol changed {old} -> {new} with {from_version} -> {to_version} for "
            f"{', '.join(users)}: clients still on protocol {old} (an older desktop app, a phone) break until "
            "they update" for (old, new), users in changed.items()]


def plan_swap(store: StateStore, *, run_id: str, from_version: str | None, to_version: str, kind: str = "swap",
              restore_from: Path | None = None, simulate_live_failure: bool = False, ring: str | None = None) -> Journal:
    """The journal of a move not started yet: what swap_and_verify will do, and what recovery reads.
    `ring`: the ring it moves (config.ring of the view it runs in), so recovery moves the same users."""
    now = utcnow()
    return Journal(run_id=run_id, kind=kind, ring=ring, from_version=from_version, to_version=to_version,
                   phase=Phase.PLANNED, snapshot_dir=str(store.snapshot_dir(run_id)),
                   restore_from=str(restore_from) if restore_from else None,
                   simulate_live_failure=simulate_live_failure, started_at=now, updated_at=now)


def _snapshot_dir(store: StateStore, journal: Journal) -> Path:
    return Path(journal.snapshot_dir) if journal.snapshot_dir else store.snapshot_dir(journal.run_id)


def drive(config: Config, store: StateStore, journal: Journal, progress: Progress) -> SwapResult:
    """Run the journal forward from its phase to VERIFIED, or into a rollback. A stop signal during it
    is honoured at the next safe point (t3track.stops): before any server stops, nothing is touched
    (Interrupted); before the flip, every server goes back on the old version; after it, the live check
    and, on failure, the rollback run as always."""
    with stops.shielded():
        result = _drive(config, store, journal, progress)
    result.interrupted = stops.requested()
    if result.interrupted and result.outcome == "swapped":
        result.notes.append(f"{result.interrupted} arrived during the swap: it was finished and checked live first")
    return result


def _drive(config: Config, store: StateStore, journal: Journal, progress: Progress) -> SwapResult:
    result = SwapResult("swapped", journal.from_version, journal.to_version)
    signal_name = stops.requested()
    if signal_name and journal.phase is Phase.PLANNED:
        jr.remove(store)
        raise Interrupted(f"stopped by {signal_name} before any server was stopped: nothing changed",
                          hint="run `t3track run` again when you mean it")
    timer = time.monotonic()
    snapshot_dir = _snapshot_dir(store, journal)
    if journal.phase is Phase.PLANNED:
        try:
            jr.write(store, journal, Phase.STOPPING)
        except OSError as exc:  # nothing stopped yet: leave everything as it is
            journal.phase = Phase.PLANNED
            jr.remove(store)
            raise EnvironmentFault(f"cannot write the swap journal in {store.dir}: {exc}; nothing was stopped",
                                   hint="free space on state_dir's filesystem, then run again") from None
    starting = False
    try:
        if journal.phase is Phase.STOPPING:
            _stop_and_snapshot_all(config, snapshot_dir, progress, result)
            jr.write(store, journal, Phase.SNAPSHOTTED)
        result.timings["stop_snapshot_s"] = time.monotonic() - timer
        signal_name = stops.requested()
        if signal_name and journal.phase is Phase.SNAPSHOTTED:  # the last point where nothing moved yet
            return rollback(config, store, journal, RollbackCause.INTERRUPTED,
                            f"stopped by {signal_name} before the flip: every server back on {journal.from_version}",
                            progress, result)
        if journal.phase is Phase.SNAPSHOTTED:
            if journal.restore_from:
                result.restored_users = _restore_from(config, Path(journal.restore_from),
                                                      only_if_migrated=False, progress=progress)
            progress(f"point current at {journal.to_version}")
            flip_current(config, journal.to_version)
            jr.write(store, journal, Phase.FLIPPED)
        if journal.phase in (Phase.FLIPPED, Phase.STARTED):
            # resumed at STARTED too: the servers may have died since (a reboot); start is idempotent
            starting = True
            each_user(config, "start", progress, marks=result.marks)
            if journal.phase is Phase.FLIPPED:
                jr.write(store, journal, Phase.STARTED)
        result.timings["swap_s"] = time.monotonic() - timer
    except (T3TrackError, OSError) as exc:  # a full disk, a service that will not stop: undo, whatever it was
        # until a server starts on the candidate, a failure is the host's (a snapshot's deadline, a full
        # disk, a stop that hangs), never the candidate's: it stays eligible
        result.host_fault = not starting
        result.refused_start = refused_starts(config) if journal.phase in (Phase.FLIPPED, Phase.STARTED) else []
        return rollback(config, store, journal, RollbackCause.STEP, f"swap step failed: {exc}", progress, result)
    if journal.phase is Phase.STARTED:
        result.live = verify_live(config, journal.to_version, progress, marks=result.marks)
        failure = _failed(result.live)
        result.timings["verify_s"] = time.monotonic() - timer - result.timings.get("swap_s", 0)
        if failure:
            strays = _old_version_answering(config, journal, result.live)
            if strays:  # a server started by hand between the stop and the flip: the host's, not the candidate's
                result.host_fault = True
                result.notes.append(f"{', '.join(strays)}: a server of {journal.from_version} answered after the "
                                    f"flip (started by hand, or by another service manager?): not {journal.to_version}'s "
                                    "failure, so it stays eligible")
            result.refused_start = refused_starts(config)
            return rollback(config, store, journal, RollbackCause.LIVE_CHECK,
                            f"live check failed for {failure.user}: {failure.detail}", progress, result)
        if journal.simulate_live_failure:
            return rollback(config, store, journal, RollbackCause.DRILL, "drill: the live check passed and is "
                            "treated as failed (the only simulated step)", progress, result)
        try:
            jr.write(store, journal, Phase.VERIFIED)
        except OSError as exc:  # verified all the same: the journal (STARTED) makes recovery re-check and keep it
            result.notes.append(f"the journal could not record the verified swap ({exc})")
    return result


def _old_version_answering(config: Config, journal: Journal, live: list[GateResult]) -> list[str]:
    """Users whose failed live check met the version the swap came from still serving (faults review M1)."""
    if journal.from_version is None or same_version(journal.from_version, journal.to_version):
        return []
    failed = {g.user for g in live if g.failed}
    return [user.name for user in config.users
            if user.name in failed and same_version(drift.serving(user), journal.from_version)]


def rollback(config: Config, store: StateStore, journal: Journal, cause: RollbackCause, reason: str,
             progress: Progress, result: SwapResult | None = None, *, recovering: bool = False) -> SwapResult:
    """Stop, flip back, restore migrated databases, start, verify the old version.

    Every step is tried for every user. A rollback that cannot complete freezes the tracker and
    leaves the journal for the operator. A rollback resumed from the journal keeps its first cause.
    A stop signal during it is remembered and changes nothing (t3track.stops).
    """
    with stops.shielded():
        return _rollback(config, store, journal, cause, reason, progress, result, recovering=recovering)


def _rollback(config: Config, store: StateStore, journal: Journal, cause: RollbackCause, reason: str,
              progress: Progress, result: SwapResult | None, *, recovering: bool) -> SwapResult:
    result = result or SwapResult("rolled_back", journal.from_version, journal.to_version)
    result.reason = journal.rollback_reason or reason
    started = time.monotonic()
    problems: list[str] = []
    try:
        if journal.phase is not Phase.ROLLING_BACK:
            journal.rollback_reason, journal.rollback_cause = reason, cause
            try:
                jr.write(store, journal, Phase.ROLLING_BACK)
            except OSError as exc:  # a full state_dir: the journal on disk still says what recovery needs
                result.notes.append(f"the journal could not record the rollback ({exc}); rolled back all the same")
        progress(f"rolling back to {journal.from_version}: {result.reason}")
        if journal.from_version is None:
            raise CriticalError("there is no previous version to roll back to (first install)")
        problems += each_user(config, "stop", progress, keep_going=True, marks=result.marks, notes=result.notes)
        if current_version(config) != journal.from_version:
            progress(f"point current back at {journal.from_version}")
            flip_current(config, journal.from_version)
        # After a swap, restore only what the candidate migrated. After a revert that restored older
        # snapshots, put back exactly what was there before it. The drill restores for real (but a
        # killed drill recovered later does not: users may have written since).
        always = journal.restore_from is not None or (journal.simulate_live_failure and not recovering)
        result.restored_users = _restore_from(config, _snapshot_dir(store, journal), only_if_migrated=not always,
                                              progress=progress, problems=problems)
        problems += each_user(config, "start", progress, keep_going=True, marks=result.marks)
        result.rollback_live = verify_live(config, journal.from_version, progress, gate=ROLLBACK_VERIFY,
                                           marks=result.marks)
        failure = _failed(result.rollback_live)
        if failure:
            problems.append(f"{journal.from_version} failed its live check after the rollback for "
                            f"{failure.user}: {failure.detail}")
        if problems:
            raise CriticalError("; ".join(problems))
    except (T3TrackError, OSError) as exc:
        result.outcome = "critical"
        result.reason = f"{result.reason}; the rollback failed: {exc}"
        _freeze_for_operator(store, result.reason, result)
        result.timings["rollback_s"] = time.monotonic() - started
        return result
    result.outcome = "rolled_back"
    result.timings["rollback_s"] = time.monotonic() - started
    return result


def _freeze_for_operator(store: StateStore, reason: str, result: SwapResult) -> None:
    """Best effort, never raising out of the error path it serves: a disk too full to record the freeze
    still leaves the journal, which makes the next run retry the rollback first."""
    try:
        state = store.load()
        state.frozen = Freeze(reason=f"t3track froze itself: {reason}", by="t3track", at=utcnow())
        store.save(state)
        store.record("freeze", by="t3track", reason=state.frozen.reason, automatic=True, critical=True,
                     journal=str(store.journal_path))
    except (T3TrackError, OSError) as exc:
        result.notes.append(f"t3track could not record its own freeze ({exc}); the journal left in "
                            f"{store.dir} makes the next run retry the rollback first")
