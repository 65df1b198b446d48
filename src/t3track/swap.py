"""The swap: stop, snapshot, flip `root/current`, start, verify live; roll back by itself on failure.

Each phase is written to the journal before it starts, so `recover` can finish or undo a swap that
was killed at any moment. The rollback restores the pre-swap snapshots when the candidate migrated
a database, because an older binary on a newer database hides or fails to read data.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from t3track import backup, journal as jr, probe, versions
from t3track.config import Config, UserConfig
from t3track.errors import CriticalError, T3TrackError
from t3track.fsutil import ensure_private_dir, fsync_dir
from t3track.gates import GateResult
from t3track.journal import Journal, Phase
from t3track.runner import run as run_command
from t3track.state import Freeze, StateStore, utcnow

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass
class SwapResult:
    outcome: str                       # swapped | rolled_back | critical
    from_version: str | None
    to_version: str
    reason: str = ""
    live: list[GateResult] = field(default_factory=list)
    rollback_live: list[GateResult] = field(default_factory=list)
    restored_users: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    step_failed: bool = False          # a stop/snapshot/flip/start step failed (not the live check)


# ---------------------------------------------------------------- the install tree


def prefix_of(config: Config, version: str) -> Path:
    return config.root / "versions" / version


def executable_of(config: Config, version: str) -> Path:
    return config.executable_in(prefix_of(config, version))


def current_version(config: Config) -> str | None:
    """The version `root/current` points at, read from the link itself."""
    link = config.root / "current"
    if not link.is_symlink():
        return None
    return Path(os.readlink(link)).name


def flip_current(config: Config, version: str) -> None:
    """Point root/current at versions/<version> atomically: a new symlink, then rename over the old."""
    target = prefix_of(config, version)
    if not target.is_dir():
        raise CriticalError(f"cannot point current at {version}: {target} is not installed")
    link = config.root / "current"
    tmp = config.root / f".current.{os.getpid()}.tmp"
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    os.symlink(Path("versions") / version, tmp)
    os.replace(tmp, link)
    fsync_dir(config.root)


# ---------------------------------------------------------------- services


def _service_argv(template: list[str], user: UserConfig) -> list[str]:
    values = {"user": user.name, "port": str(user.port), "base_dir": str(user.base_dir)}
    return [part.format(**values) for part in template]


def service(config: Config, action: str, user: UserConfig) -> None:
    argv = _service_argv(getattr(config.services, action), user)
    try:
        result = run_command(argv, timeout=config.services.timeout.total_seconds())
    except T3TrackError as exc:  # e.g. the service command is not installed
        raise CriticalError(f"{action} of {user.name}'s server failed: {exc.message}",
                            hint=f"check the service command in the config: {' '.join(argv)}") from None
    if not result.ok:
        raise CriticalError(f"{action} of {user.name}'s server failed: {result.describe()}",
                            hint=f"check the service by hand: {' '.join(argv)}")


def _each_user(config: Config, action: str, progress: Progress, *, keep_going: bool = False) -> list[str]:
    """Run `action` for every user. A swap stops at the first failure; a rollback tries every user
    (a user left stopped because another user's start failed would be a second outage)."""
    problems = []
    for user in config.users:
        progress(f"{action} {user.name}'s server")
        try:
            service(config, action, user)
        except CriticalError as exc:
            if not keep_going:
                raise
            problems.append(exc.message)
    return problems


# ---------------------------------------------------------------- snapshots


def _snapshot_all(config: Config, snapshot_dir: Path, progress: Progress) -> None:
    ensure_private_dir(snapshot_dir)
    for user in config.users:
        dest = snapshot_dir / user.name
        if (dest / backup.MANIFEST).is_file():
            continue  # a resumed swap keeps the snapshot taken before it was killed
        if not (user.base_dir / "userdata" / backup.MAIN_DB).exists():
            # a new host (adopt): nobody has served T3 here yet; the server creates its state on start
            progress(f"{user.name} has no T3 state yet: nothing to snapshot")
            continue
        progress(f"snapshot {user.name}'s database")
        backup.snapshot_database(user.base_dir, dest)


def _restore_from(config: Config, snapshot_dir: Path, *, only_if_migrated: bool, progress: Progress,
                  problems: list[str] | None = None) -> list[str]:
    """Restore each user's database from the snapshots in `snapshot_dir`: always, or only when the
    live database carries migrations the snapshot lacks (the candidate migrated it forward).

    With `problems`, a user whose restore fails is noted there and the others are still restored."""
    restored = []
    for user in config.users:
        snap = snapshot_dir / user.name
        if not (snap / backup.MANIFEST).is_file():
            continue  # killed before this snapshot completed: the candidate never touched this database
        userdata = user.base_dir / "userdata"
        if only_if_migrated and not _migrated(snap, userdata):
            continue
        progress(f"restore {user.name}'s database from {snap}")
        try:
            backup.restore_database(backup.read_backup(snap, user.name), userdata)
        except (T3TrackError, OSError) as exc:
            if problems is None:
                raise
            problems.append(f"restore of {user.name}'s database from {snap} failed: {getattr(exc, 'message', exc)}")
            continue
        if not (snap / "statev2.sqlite").exists():
            # newer builds copy state.sqlite to statev2.sqlite on first start; the old one never had it
            try:
                (userdata / "statev2.sqlite").unlink()
            except FileNotFoundError:
                pass
        restored.append(user.name)
    return restored


def _migrated(snap: Path, userdata: Path) -> bool:
    """Did the candidate move either database forward (or create statev2)? Unreadable counts as yes:
    restoring a snapshot taken a moment ago loses less than running the old binary on an unknown schema."""
    for name in ("state.sqlite", "statev2.sqlite"):
        live, saved = userdata / name, snap / name
        if not live.exists():
            continue
        if not saved.exists():
            return True
        try:
            if (backup.max_migration_id(live) or 0) > (backup.max_migration_id(saved) or 0):
                return True
        except (T3TrackError, OSError):
            return True
    return False


# ---------------------------------------------------------------- live verification


def same_version(seen: str | None, expected: str) -> bool:
    """SemVer equality: build metadata (`0.0.42+drill.1`, a second copy of 0.0.42) does not count."""
    return seen is not None and versions.is_valid(seen) and versions.compare(seen, expected) == 0


def _wait_for_version(url: str, version: str, deadline: float) -> str | None:
    seen = None
    while time.monotonic() < deadline:
        seen = probe.server_version(url, timeout=probe.READY_POLL_TIMEOUT_S)
        if same_version(seen, version):
            return seen
        time.sleep(0.2)
    return seen


def verify_live(config: Config, version: str, progress: Progress = _quiet, gate: str = "live-verify") -> list[GateResult]:
    """Every user's server must report `version` and pass the pairing probe within verify_timeout."""
    results = []
    executable = executable_of(config, version)
    for user in config.users:
        started = time.monotonic()
        deadline = started + config.verify_timeout.total_seconds()
        url = f"http://127.0.0.1:{user.port}"
        progress(f"live check {user.name} on {url}")
        seen = _wait_for_version(url, version, deadline)
        if not same_version(seen, version):
            results.append(GateResult(gate, user.name, "fail", time.monotonic() - started,
                                      f"{url} reports serverVersion {seen!r}, expected {version!r} "
                                      f"within {config.verify_timeout.total_seconds():.0f}s",
                                      fingerprint=f"{gate}:version"))
            return results
        remaining = max(1.0, deadline - time.monotonic())
        outcome = probe.pairing_probe(url, user.base_dir, executable,
                                      timeout=min(remaining, config.gates.probe_timeout.total_seconds()),
                                      # never mint as root into a user's state: the server could not write it
                                      run_as=user.run_as or probe.base_dir_owner(user.base_dir))
        if not outcome.ok:
            results.append(GateResult(gate, user.name, "fail", time.monotonic() - started,
                                      f"pairing probe failed at step {outcome.step} (status {outcome.status}): "
                                      f"{outcome.detail}", fingerprint=f"{gate}:{outcome.step}:{outcome.status}"))
            return results
        if user.front_door:
            door = probe.front_door_check(user.front_door, timeout=config.gates.probe_timeout.total_seconds())
            if not door.ok:
                results.append(GateResult(gate, user.name, "fail", time.monotonic() - started,
                                          f"front door {user.front_door} failed: {door.detail}",
                                          fingerprint=f"front-door:{door.step}:{door.status}"))
                return results
        results.append(GateResult(gate, user.name, "pass", time.monotonic() - started,
                                  f"serving {version}; pairing handshake passed"))
    return results


def _failed(results: list[GateResult]) -> GateResult | None:
    return next((r for r in results if r.outcome != "pass"), None)


# ---------------------------------------------------------------- swap and rollback


def swap_to(config: Config, store: StateStore, *, run_id: str, from_version: str | None, to_version: str,
            kind: str = "swap", restore_from: Path | None = None, simulate_live_failure: bool = False,
            progress: Progress = _quiet) -> SwapResult:
    """Move every server from `from_version` to `to_version`; roll back by itself if the live check fails.

    `simulate_live_failure` (the drill) treats a passing live check as failed, so the whole rollback
    path runs for real."""
    now = utcnow()
    snapshot_dir = store.dir / "snapshots" / run_id
    journal = Journal(run_id=run_id, kind=kind, from_version=from_version, to_version=to_version,
                      phase=Phase.PLANNED, snapshot_dir=str(snapshot_dir),
                      restore_from=str(restore_from) if restore_from else None,
                      simulate_live_failure=simulate_live_failure,
                      started_at=now, updated_at=now)
    jr.write(store, journal)
    return _drive(config, store, journal, progress)


def _snapshot_dir(store: StateStore, journal: Journal) -> Path:
    return Path(journal.snapshot_dir) if journal.snapshot_dir else store.dir / "snapshots" / journal.run_id


def _drive(config: Config, store: StateStore, journal: Journal, progress: Progress) -> SwapResult:
    """Run the journal forward from its phase to VERIFIED, or into a rollback."""
    result = SwapResult("swapped", journal.from_version, journal.to_version)
    timer = time.monotonic()
    snapshot_dir = _snapshot_dir(store, journal)
    try:
        if journal.phase in (Phase.PLANNED, Phase.STOPPING):
            jr.write(store, journal, Phase.STOPPING)
            _each_user(config, "stop", progress)
            _snapshot_all(config, snapshot_dir, progress)
            jr.write(store, journal, Phase.SNAPSHOTTED)
        result.timings["stop_snapshot_s"] = time.monotonic() - timer
        if journal.phase is Phase.SNAPSHOTTED:
            if journal.restore_from:
                result.restored_users = _restore_from(config, Path(journal.restore_from),
                                                      only_if_migrated=False, progress=progress)
            progress(f"point current at {journal.to_version}")
            flip_current(config, journal.to_version)
            jr.write(store, journal, Phase.FLIPPED)
        if journal.phase in (Phase.FLIPPED, Phase.STARTED):
            # resumed at STARTED too: the servers may have died since (a reboot); start is idempotent
            _each_user(config, "start", progress)
            if journal.phase is Phase.FLIPPED:
                jr.write(store, journal, Phase.STARTED)
        result.timings["swap_s"] = time.monotonic() - timer
    except (T3TrackError, OSError) as exc:  # a full disk, a service that will not stop: undo, whatever it was
        result.step_failed = True
        return rollback(config, store, journal, f"swap step failed: {getattr(exc, 'message', None) or exc}",
                        progress, result)
    if journal.phase is Phase.STARTED:
        result.live = verify_live(config, journal.to_version, progress)
        failure = _failed(result.live)
        result.timings["verify_s"] = time.monotonic() - timer - result.timings.get("swap_s", 0)
        if failure:
            return rollback(config, store, journal, f"live check failed for {failure.user}: {failure.detail}",
                            progress, result)
        if journal.simulate_live_failure:
            return rollback(config, store, journal, "drill: the live check passed and is treated as failed "
                            "(the only simulated step)", progress, result)
        jr.write(store, journal, Phase.VERIFIED)
    return result


def rollback(config: Config, store: StateStore, journal: Journal, reason: str, progress: Progress,
             result: SwapResult | None = None, *, recovering: bool = False) -> SwapResult:
    """Stop, flip back, restore migrated databases, start, verify the old version.

    Every step is tried for every user. A rollback that cannot complete freezes the tracker and
    leaves the journal for the operator.
    """
    result = result or SwapResult("rolled_back", journal.from_version, journal.to_version)
    result.reason = journal.rollback_reason or reason
    started = time.monotonic()
    problems: list[str] = []
    try:
        if journal.phase is not Phase.ROLLING_BACK:
            journal.rollback_reason = reason
            jr.write(store, journal, Phase.ROLLING_BACK)
        progress(f"rolling back to {journal.from_version}: {result.reason}")
        if journal.from_version is None:
            raise CriticalError("there is no previous version to roll back to (first install)")
        problems += _each_user(config, "stop", progress, keep_going=True)
        if current_version(config) != journal.from_version:
            progress(f"point current back at {journal.from_version}")
            flip_current(config, journal.from_version)
        # After a swap, restore only what the candidate migrated. After a revert that restored older
        # snapshots, put back exactly what was there before it. The drill restores for real (but a
        # killed drill recovered later does not: users may have written since).
        always = journal.restore_from is not None or (journal.simulate_live_failure and not recovering)
        result.restored_users = _restore_from(config, _snapshot_dir(store, journal), only_if_migrated=not always,
                                              progress=progress, problems=problems)
        problems += _each_user(config, "start", progress, keep_going=True)
        result.rollback_live = verify_live(config, journal.from_version, progress, gate="rollback-verify")
        failure = _failed(result.rollback_live)
        if failure:
            problems.append(f"{journal.from_version} failed its live check after the rollback for "
                            f"{failure.user}: {failure.detail}")
        if problems:
            raise CriticalError("; ".join(problems))
    except (T3TrackError, OSError) as exc:
        result.outcome = "critical"
        result.reason = f"{result.reason}; the rollback failed: {getattr(exc, 'message', None) or exc}"
        _freeze_for_operator(store, result.reason)
        result.timings["rollback_s"] = time.monotonic() - started
        return result
    result.outcome = "rolled_back"
    result.timings["rollback_s"] = time.monotonic() - started
    return result


def _freeze_for_operator(store: StateStore, reason: str) -> None:
    state = store.load()
    state.frozen = Freeze(reason=f"t3track froze itself: {reason}", by="t3track", at=utcnow())
    store.save(state)
    store.record("freeze", by="t3track", reason=state.frozen.reason, automatic=True, critical=True,
                 journal=str(jr.journal_path(store)))


# ---------------------------------------------------------------- recovery


@dataclass
class Recovery:
    run_id: str
    kind: str
    phase: str
    action: str          # finished | rolled_back | critical | cleared
    result: SwapResult | None
    rollback_was_for_failure: bool = False  # a nightly candidate failed a live check: deny it


def recover(config: Config, store: StateStore, progress: Progress = _quiet) -> Recovery | None:
    """A journal left by a killed run is finished or rolled back before anything else happens.

    A run killed after the flip may have left the candidate serving users for hours: it is checked
    live first and kept when it passes, so nothing users wrote since is undone."""
    journal = jr.read(store)
    if journal is None:
        return None
    phase = journal.phase.value

    def done(action: str, result: SwapResult | None, for_failure: bool = False) -> Recovery:
        return Recovery(journal.run_id, journal.kind, phase, action, result, for_failure)

    progress(f"recovering an interrupted {journal.kind} ({journal.from_version} -> {journal.to_version}, phase {phase})")
    if journal.phase is Phase.PLANNED:
        jr.remove(store)  # nothing was touched yet
        return done("cleared", None)
    if journal.phase is Phase.VERIFIED:
        return done("finished", SwapResult("swapped", journal.from_version, journal.to_version))
    # only a nightly candidate is denied for failing live; a revert's or adopt's target is the operator's call
    nightly = journal.kind == "swap"
    forward = journal.phase in (Phase.FLIPPED, Phase.STARTED) and not journal.simulate_live_failure
    if forward or (journal.from_version is None and journal.phase is not Phase.ROLLING_BACK):
        # (a first install has nothing to roll back to either) start what is not running, check live,
        # and roll back only if that check fails
        result = _drive(config, store, journal, progress)
        if result.outcome == "swapped":
            return done("finished", result)
        return done("rolled_back" if result.outcome == "rolled_back" else "critical", result,
                    for_failure=nightly and any(g.outcome == "fail" for g in result.live))
    for_failure = nightly and journal.rollback_reason is not None \
        and journal.rollback_reason.startswith("live check failed")
    result = rollback(config, store, journal, journal.rollback_reason or f"interrupted during phase {phase}",
                      progress, recovering=True)
    return done("rolled_back" if result.outcome == "rolled_back" else "critical", result, for_failure)
