"""`t3track check`: one line for a monitoring system, after the Monitoring Plugins conventions
(Nagios, Icinga, Checkmk, Zabbix agents run these): `T3TRACK OK|WARNING|CRITICAL|UNKNOWN - summary |
perfdata`, exit 0, 1, 2, 3.

CRITICAL: a user's server not answering or serving another version than its link; a swap journal a
killed run left; the tracker frozen by itself; no run for 36 hours. WARNING: an operator's freeze older
than a week; a backup older than gates.backup_max_age; rings disagreeing for a week; refused three
nights running; a user held by an agent at work three nights running. UNKNOWN: what it must read cannot be read (give the monitoring user read access: the
README's "Monitoring").

Read-only and cheap: it never takes the lock (a night in progress is found in /proc/locks), never
reads a user's database and never writes; each server is asked its version on loopback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from t3track.aftermath.metrics import consecutive_refusals
from t3track.aftermath.notify import HELD_NIGHTS
from t3track.clock import human_age, utcnow
from t3track.errors import T3TrackError
from t3track.host import manifest, tree
from t3track.night import drift, journal
from t3track.versions import same_version

if TYPE_CHECKING:
    from t3track.config import Config
    from t3track.state import State, StateStore

NO_RUN_FOR = timedelta(hours=36)
OPERATOR_FREEZE_FOR = timedelta(days=7)
RINGS_APART_FOR = timedelta(days=7)
REFUSED_NIGHTS = 3
EXIT = {"OK": 0, "WARNING": 1, "CRITICAL": 2, "UNKNOWN": 3}


@dataclass
class Check:
    status: str                                   # OK | WARNING | CRITICAL | UNKNOWN
    summary: str
    critical: list[str] = field(default_factory=list)
    warning: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    perfdata: dict[str, float | int] = field(default_factory=dict)
    json_extra = ("exit_code", "line")

    @property
    def exit_code(self) -> int:
        return EXIT[self.status]

    @property
    def line(self) -> str:
        perf = " ".join(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
                        for key, value in self.perfdata.items())
        return f"T3TRACK {self.status} - {self.summary}" + (f" | {perf}" if perf else "")


def check(config: Config, store: StateStore, *, now: datetime | None = None) -> Check:
    moment = now or utcnow()
    critical: list[str] = []
    warning: list[str] = []
    unknown: list[str] = []
    perf: dict[str, float | int] = {"users": len(config.users)}
    try:
        state = store.load()
    except (T3TrackError, OSError) as exc:
        reason = exc.message if isinstance(exc, T3TrackError) else str(exc)
        return Check("UNKNOWN", f"cannot read t3track's state: {reason}", unknown=[reason], perfdata=perf)
    holder = store.lock_holder()
    managed = state.current is not None or tree.current_link(config).is_symlink()
    if not managed:
        return Check("WARNING", "t3track does not manage this host yet: run `t3track adopt VERSION`",
                     warning=["not adopted yet"], perfdata=perf)

    answering = 0
    for user in config.users:
        linked = tree.user_version(config, user.name) or state.current
        seen = drift.serving(user)
        if seen is None:
            if holder is None:  # during a night, servers stop and start on purpose
                critical.append(f"{user.name}'s server is not answering on 127.0.0.1:{user.port}")
            continue
        answering += 1
        if linked is not None and not same_version(seen, linked):
            critical.append(f"{user.name}'s server serves {seen}, not {linked} that its link names")
    perf["serving"] = answering

    if store.journal_path.exists() and holder is None:
        critical.append("a swap journal was left by a killed run: the next `t3track run` finishes or rolls it "
                        "back (or see runbooks/t3-version-bump.md)")
    frozen = state.frozen
    if frozen is not None and not frozen.expired(moment):
        if frozen.by == "t3track":
            critical.append(f"t3track froze itself: {frozen.reason}")
        elif moment - frozen.at > OPERATOR_FREEZE_FOR:
            warning.append(f"frozen by {frozen.by} for {human_age((moment - frozen.at).total_seconds())}: "
                           f"{frozen.reason}")
    if state.last_run is None:
        critical.append("no nightly run recorded yet: is t3track.timer enabled?")
    else:
        age = (moment - state.last_run.at).total_seconds()
        perf["last_run_age_s"] = round(age)
        if age > NO_RUN_FOR.total_seconds():
            critical.append(f"no run for {human_age(age)} (the last at {state.last_run.at:%Y-%m-%d %H:%M}Z): "
                            f"is t3track.timer enabled? `systemctl list-timers t3track.timer`")
    for name, held in sorted(state.held.items()):
        if held.nights >= HELD_NIGHTS:
            warning.append(f"{name} held on the old version {held.nights} nights running by an agent at work: "
                           f"`t3track run --ignore-busy` moves them anyway")
    perf["held_users"] = len(state.held)
    perf["pending"] = len(state.pending)
    if state.pending:
        perf["pending_age_s"] = round(max((moment - p.since).total_seconds() for p in state.pending))
    refused = consecutive_refusals(store.history(limit=50))
    perf["consecutive_refusals"] = refused
    if refused >= REFUSED_NIGHTS:
        warning.append(f"{refused} nights in a row refused or rolled back: `t3track history`")
    _backups(config, moment, perf, warning, unknown)
    _rings(config, state, moment, warning)

    status = "CRITICAL" if critical else "UNKNOWN" if unknown else "WARNING" if warning else "OK"
    problems = critical or unknown or warning
    if problems:
        summary = problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
    else:
        summary = f"{state.current} serves {answering} of {len(config.users)} user(s)"
        if state.pending:
            oldest = min(state.pending, key=lambda p: p.since)
            summary += (f"; {', '.join(p.version + (f' (ring {p.ring})' if p.ring else '') for p in state.pending)} "
                        f"pending approval for {human_age((moment - oldest.since).total_seconds())}")
        if holder is not None:
            summary += f"; a night is in progress (pid {holder}, {_phase(store)})"
    return Check(status, summary, critical, warning, unknown, perf)


def _phase(store: StateStore) -> str:
    """Where a night in progress is: its swap journal's phase, or before the swap."""
    try:
        found = journal.read(store)
    except T3TrackError:
        return "swap journal unreadable"
    return f"swap phase {found.phase.value}" if found else "resolving, installing or rehearsing"


def _backups(config: Config, moment: datetime, perf: dict[str, float | int], warning: list[str],
             unknown: list[str]) -> None:
    oldest = 0.0
    for user in config.users:
        try:
            newest = manifest.newest_backup(config, user.name)
        except (T3TrackError, OSError) as exc:
            unknown.append(f"cannot read {user.name}'s backups: {exc}")
            continue
        if newest is None:
            warning.append(f"{user.name} has no backup: `t3track backup --user {user.name}`")
            continue
        age = newest.age_s(moment)
        oldest = max(oldest, age)
        if age > config.gates.backup_max_age.total_seconds():
            warning.append(f"{user.name}'s newest backup is {human_age(age)} old, older than gates.backup_max_age")
    perf["oldest_backup_age_s"] = round(oldest)


def _rings(config: Config, state: State, moment: datetime, warning: list[str]) -> None:
    if not config.ringed:
        return
    currents = {ring.name: state.ring(ring.name, first=i == 0).current for i, ring in enumerate(config.ring_configs())}
    if len(set(currents.values())) <= 1:
        return
    first = state.ring(config.first_ring, first=True).open_stretch()
    if first is not None and first.served_for(moment) > RINGS_APART_FOR.total_seconds():
        apart = ", ".join(f"{name} on {version or 'nothing'}" for name, version in currents.items())
        warning.append(f"the rings disagree for more than a week ({apart}): see `t3track status`")
