"""Prometheus metrics for node_exporter's textfile collector, rebuilt from state_dir after every run
and operator action and written atomically.

Everything is read back from what t3track keeps (state.json, history.jsonl, the last run's
evidence/<run-id>/result.json, the backups), so any command can rewrite the file and it always
describes the same thing: the last nightly run, the tracker's state now, and each user's backup age.

Where: `metrics_path` in the config, which must be a `*.prom` file in the directory node_exporter
reads (`--collector.textfile.directory`, e.g. /var/lib/node_exporter/textfile_collector/ or Debian's
/var/lib/prometheus/node-exporter/). That file is written 0644: node_exporter runs as its own user
and the metrics hold no secrets (versions, outcomes, ages). Without `metrics_path` the file goes to
state_dir/metrics/t3track.prom, 0600 like everything else in state_dir, for `cat` and for tests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Info
from prometheus_client.exposition import generate_latest

from t3track.aftermath.evidence import RESULT_FILE, evidence_dir
from t3track.clock import utcnow
from t3track.config import Config
from t3track.errors import T3TrackError
from t3track.fsutil import atomic_write_bytes, ensure_private_dir
from t3track.host import backup
from t3track.state import State, StateStore

OUTCOMES = ("swapped", "noop", "refused", "rolled_back", "error", "critical")
GATE_OUTCOMES = ("pass", "fail", "inconclusive")
REFUSALS = ("refused", "rolled_back", "critical")
PUBLIC_FILE = 0o644


def _ts(moment: datetime | str | None) -> float | None:
    if moment is None:
        return None
    if isinstance(moment, str):
        try:
            moment = datetime.fromisoformat(moment.replace("Z", "+00:00"))
        except ValueError:
            return None
    return moment.timestamp()


def consecutive_refusals(events: list[dict[str, Any]]) -> int:
    """Nightly runs (newest first) refused, rolled back or critical since the last one that was not.
    An operator's `run --to` (recorded with his name as `by`) is his move, not a night: skipped."""
    count = 0
    for event in events:
        if event.get("event") != "run" or event.get("by", "t3track") != "t3track" or event.get("held_by"):
            continue  # an operator's move, or a night a window, the approval step or a pre_swap hook held
        if event.get("outcome") not in REFUSALS:
            break
        count += 1
    return count


def _last_run_gates(store: StateStore, run_id: str | None) -> list[dict[str, Any]]:
    if not run_id:
        return []
    try:
        document = json.loads((evidence_dir(store, run_id) / RESULT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    gates = document.get("gates")
    return gates if isinstance(gates, list) else []


def build_registry(config: Config, store: StateStore, *, now: datetime | None = None) -> CollectorRegistry:
    config, store = config.host, store.host  # the whole host, whichever ring's move wrote them
    moment = now or utcnow()
    state = store.load()
    events = store.history()
    registry = CollectorRegistry()

    def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, labels, registry=registry)

    from t3track import __version__, build_commit

    gauge("t3track_build_info", "1, labelled with the t3track version and the commit it was installed from",
          ("version", "commit")).labels(version=__version__, commit=build_commit()).set(1)
    # the last nightly run
    last = state.last_run
    run_ts = gauge("t3track_last_run_timestamp_seconds", "When the last nightly run finished (unix time)")
    outcome = gauge("t3track_last_run_outcome", "1 for the outcome of the last nightly run, 0 for the others",
                    ("outcome",))
    exit_code = gauge("t3track_last_run_exit_code", "Exit code of the last nightly run")
    if last is not None:
        run_ts.set(last.at.timestamp())
        exit_code.set(last.exit_code)
        for name in OUTCOMES:
            outcome.labels(outcome=name).set(1 if last.outcome == name else 0)
    last_ok = next((e for e in events if e.get("event") == "run" and e.get("exit_code") == 0), None)
    ok_ts = _ts(last_ok.get("at")) if last_ok else None
    if ok_ts is not None:
        gauge("t3track_last_ok_run_timestamp_seconds",
              "When a nightly run last ended with exit 0 (swapped or nothing to do)").set(ok_ts)
    gauge("t3track_consecutive_refusals",
          "Nightly runs in a row that were refused, rolled back or critical").set(consecutive_refusals(events))

    # gates of the last nightly run, per gate and user
    result = gauge("t3track_gate_result", "1 for the outcome of the gate in the last run, 0 for the others",
                   ("gate", "user", "outcome"))
    duration = gauge("t3track_gate_duration_seconds", "How long the gate took in the last run", ("gate", "user"))
    rolled_back = False
    for entry in _last_run_gates(store, last.run_id if last else None):
        gate, user_name = str(entry.get("name")), str(entry.get("user"))
        if gate == "live-verify":
            # the old version's live checks after a rollback come after the failed one, under the same name
            if rolled_back:
                gate = "rollback-verify"
            elif entry.get("outcome") == "fail":
                rolled_back = True
        for name in GATE_OUTCOMES:
            result.labels(gate=gate, user=user_name, outcome=name).set(1 if entry.get("outcome") == name else 0)
        if isinstance(entry.get("duration_s"), (int, float)):
            duration.labels(gate=gate, user=user_name).set(entry["duration_s"])

    # the tracker now
    Info("t3track_current_version", "The version root/current serves, and the one before it",
         registry=registry).info({"version": state.current or "", "previous": state.previous or "",
                                  "package": config.package, "channel": config.channel})
    frozen = state.frozen is not None and not state.frozen.expired(moment)
    gauge("t3track_frozen", "1 while bumps are frozen").set(1 if frozen else 0)
    if frozen and state.frozen is not None and state.frozen.until is not None:
        gauge("t3track_frozen_until_timestamp_seconds", "When the freeze lifts itself").set(state.frozen.until.timestamp())
    gauge("t3track_pinned", "1 while held at a pinned version").set(1 if state.pinned else 0)
    gauge("t3track_denied_versions", "Versions t3track will not consider").set(len(state.denied))
    gauge("t3track_swap_unfinished", "1 when a swap journal is left (the next run recovers it)").set(
        1 if store.journal_path.exists() else 0)
    if config.ringed:
        _ring_metrics(config, state, moment, gauge, registry)
    pending = gauge("t3track_pending_approval", "1 for each candidate waiting for `t3track approve` "
                    "(when.approval: manual); ring \"\" is the whole host", ("ring", "version"))
    since = gauge("t3track_pending_since_timestamp_seconds", "When the candidate was first left pending", ("ring",))
    passed = gauge("t3track_pending_gates_passed_timestamp_seconds", "When its gates last passed", ("ring",))
    for waiting in state.pending:
        pending.labels(ring=waiting.ring or "", version=waiting.version).set(1)
        since.labels(ring=waiting.ring or "").set(waiting.since.timestamp())
        passed.labels(ring=waiting.ring or "").set(waiting.gates_passed_at.timestamp())

    # users an agent's work held on the old version (`held: busy`)
    held = gauge("t3track_user_held_nights", "Nightly moves in a row that left the user on the old version "
                 "because an agent was at work (0: moved, or never held)", ("user",))
    for user in config.users:
        streak = state.held.get(user.name)
        held.labels(user=user.name).set(streak.nights if streak is not None else 0)

    # backups
    age = gauge("t3track_backup_age_seconds", "Age of the newest backup of the user's state", ("user",))
    present = gauge("t3track_backup_present", "1 when the user has at least one backup", ("user",))
    for user in config.users:
        try:
            newest = backup.newest_backup(config, user.name)
        except (T3TrackError, OSError):
            newest = None  # an unreadable backup dir reads as no backup: the gate would say so too
        present.labels(user=user.name).set(1 if newest else 0)
        if newest is not None:
            age.labels(user=user.name).set(round(newest.age_s(moment), 3))
    gauge("t3track_backup_max_age_seconds", "gates.backup_max_age: older backups fail the backup-present gate").set(
        config.gates.backup_max_age.total_seconds())

    # the rollback drill
    drill = next((e for e in events if e.get("event") == "drill"), None)
    drill_at = _ts(drill.get("at")) if drill is not None else None
    if drill is not None and drill_at is not None:
        gauge("t3track_last_drill_timestamp_seconds", "When `t3track drill` last ran").set(drill_at)
        gauge("t3track_last_drill_ok", "1 when the last drill rolled back and served the old version again").set(
            1 if drill.get("exit_code") == 0 else 0)
        if isinstance(drill.get("downtime_s"), (int, float)):
            gauge("t3track_last_drill_downtime_seconds",
                  "The longest user downtime in the last drill (swap plus rollback)").set(drill["downtime_s"])
    return registry


def _ring_metrics(config: Config, state: State, moment: datetime, gauge: Any, registry: CollectorRegistry) -> None:
    """Each ring of a host with rings: its version, how long it has served it, its own holds, and
    which ring the last nightly run moved."""
    info = Info("t3track_ring_version", "The version each ring's link serves, and the one before it", ("ring",),
                registry=registry)
    soaked = gauge("t3track_ring_soaked_seconds", "How long the ring has served its current version", ("ring",))
    since = gauge("t3track_ring_since_timestamp_seconds", "When the ring's link came to its current version "
                  "(unix time)", ("ring",))
    frozen = gauge("t3track_ring_frozen", "1 while the ring's own freeze holds it", ("ring",))
    pinned = gauge("t3track_ring_pinned", "1 while the ring's own pin holds it", ("ring",))
    for i, ring in enumerate(config.ring_names()):
        own = state.ring(ring, first=i == 0)
        info.labels(ring=ring).info({"version": own.current or "", "previous": own.previous or ""})
        stretch = own.open_stretch()
        if stretch is not None:
            soaked.labels(ring=ring).set(round(stretch.served_for(moment), 3))
            since.labels(ring=ring).set(stretch.since.timestamp())
        frozen.labels(ring=ring).set(1 if own.frozen is not None and not own.frozen.expired(moment) else 0)
        pinned.labels(ring=ring).set(1 if own.pinned is not None else 0)
    last = state.last_run
    if last is not None and last.ring:
        Info("t3track_last_run_ring", "The ring the last nightly run moved", registry=registry).info({"ring": last.ring})


@dataclass
class MetricsWritten:
    path: Path | None
    problem: str | None = None


def write(config: Config, store: StateStore, *, now: datetime | None = None) -> Path:
    """Rebuild the metrics and replace the .prom file atomically (temp file, fsync, rename)."""
    path = config.metrics_file()
    body = generate_latest(build_registry(config, store, now=now))
    if config.metrics_path is None:
        ensure_private_dir(path.parent)
        atomic_write_bytes(path, body)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, body, mode=PUBLIC_FILE)
    return path


def write_quietly(config: Config, store: StateStore) -> MetricsWritten:
    """`write`, but a failure is returned as a problem to report, never raised: metrics never fail a run."""
    try:
        return MetricsWritten(write(config, store))
    except Exception as exc:  # noqa: BLE001 - anything, from a full disk to a corrupt state file
        return MetricsWritten(None, f"metrics not written to {config.metrics_file()}: "
                                    f"{getattr(exc, 'message', None) or exc}")
