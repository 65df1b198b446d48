"""Tell the operator: Apprise URLs (ntfy, Gotify, Slack, Discord, Matrix, Telegram, mail...), a JSON
webhook and/or a command, on the nights that need a human.

Sent on (`notify.on`, by default all but `swapped`): a refused run, a rollback, a critical run, a freeze
that lifted itself, a candidate left pending approval (`pending`, once per ring and version, with the
`t3track approve` command to run), a user whose newest backup is older than gates.backup_max_age (once per stale
backup, not every night), drift found on a night with nothing to move (once per user and version
served), a user held by an agent's work for HELD_NIGHTS nights in a row (once per streak), and
`swapped`, the morning report of a night that moved (from and to, the ring, the one-way migrations it
crossed, each user's downtime, the evidence). Never for a dry run.

A notification that fails (endpoint down, non-2xx, command exits non-zero or times out) is recorded
in history as a `notify` event with ok=false and returned as a problem; it never fails the run.

Every URL may itself be a secret (chat webhooks and Apprise URLs carry tokens): of a webhook only its
scheme and host, of an Apprise URL only its scheme and place in the list are ever written anywhere.
"""

from __future__ import annotations

import json
import logging
import re
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from t3track import runner
from t3track.aftermath.evidence import run_started_at
from t3track.clock import iso, utcnow
from t3track.config import Config, NotifyConfig
from t3track.errors import T3TrackError
from t3track.fsutil import atomic_write_text
from t3track.host import backup
from t3track.redact import redact
from t3track.state import StateStore

NOTIFY_STATE_FILE = "notify.json"
HELD_NIGHTS = 3  # nights in a row a user's agents kept the user on the old version before anyone is told
PLACEHOLDERS = ("event", "outcome", "host", "ring", "from", "to", "candidate", "gate", "user", "reason", "evidence",
                "run_id")


@dataclass
class Notification:
    event: str               # refused | rolled_back | critical | freeze_expired | backup_stale | drift | held | swapped
    body: dict[str, Any]


@dataclass
class Delivery:
    event: str
    via: str                 # webhook | command
    ok: bool
    detail: str

    @property
    def problem(self) -> str | None:
        return None if self.ok else f"notification {self.event} via {self.via} failed: {self.detail}"


def host_name(notify: NotifyConfig | None) -> str:
    return (notify.host if notify and notify.host else None) or socket.gethostname()


def _failed_gate(report: Any) -> Any:
    return next((g for g in getattr(report, "gates", []) or [] if g.outcome == "fail"), None)


def body_for(config: Config, event: str, report: Any, **extra: Any) -> dict[str, Any]:
    gate = _failed_gate(report) if report is not None else None
    body: dict[str, Any] = {
        "host": host_name(config.notify),
        "event": event,
        "ring": getattr(report, "ring", None),  # the ring it moved, on a host with rings
        "outcome": str(report.outcome) if report is not None else None,
        "from": getattr(report, "from_version", None),
        "to": getattr(report, "to_version", None),
        "candidate": getattr(report, "candidate", None),
        "gate": gate.name if gate else None,
        "user": gate.user if gate else None,
        "reason": getattr(report, "reason", None),
        "evidence": getattr(report, "evidence", None),
        "run_id": getattr(report, "run_id", None),
        "exit_code": int(report.exit_code) if report is not None else None,
        "at": iso(utcnow()),
    }
    body.update(extra)
    return {k: redact(v) if isinstance(v, str) else v for k, v in body.items()}


# ---------------------------------------------------------------- what to send


def _load_sent(store: StateStore) -> dict[str, Any]:
    try:
        data = json.loads((store.dir / NOTIFY_STATE_FILE).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_sent(store: StateStore, data: dict[str, Any]) -> None:
    store.ensure()
    atomic_write_text(store.dir / NOTIFY_STATE_FILE, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _freeze_expiries(store: StateStore, report: Any) -> list[dict[str, Any]]:
    """`unfreeze` events t3track recorded itself (a freeze whose end passed) since this run started."""
    started = run_started_at(getattr(report, "run_id", "") or "")
    if started is None:
        return []
    found = []
    for event in store.history():
        try:
            at = datetime.fromisoformat(str(event.get("at")).replace("Z", "+00:00"))
        except ValueError:
            continue
        if at < started:
            break
        if event.get("event") == "unfreeze" and event.get("automatic"):
            found.append(event)
    return found


def _stale_backups(config: Config, store: StateStore, sent: dict[str, Any], now: datetime) -> list[Notification]:
    """Users whose newest backup is missing or too old; each stale backup is reported once."""
    notes = []
    told: dict[str, str] = dict(sent.get("backup_stale", {}))
    max_age = config.gates.backup_max_age.total_seconds()
    for user in config.users:
        try:
            newest = backup.newest_backup(config, user.name)
        except (T3TrackError, OSError):
            newest = None
        if newest is not None and newest.age_s(now) <= max_age:
            told.pop(user.name, None)
            continue
        key = str(newest.path) if newest else "none"
        if told.get(user.name) == key:
            continue
        told[user.name] = key
        if newest is None:
            reason = f"{user.name} has no backup; run `t3track backup --user {user.name}`"
            age = None
        else:
            age = round(newest.age_s(now))
            reason = (f"{user.name}'s newest backup {newest.path} is {age // 3600}h old, older than "
                      f"gates.backup_max_age ({int(max_age) // 3600}h): the next candidate will be refused; "
                      f"check the backup timer, or run `t3track backup --user {user.name}`")
        notes.append(Notification("backup_stale", {"user": user.name, "backup": key if newest else None,
                                                   "backup_age_s": age, "reason": reason}))
    sent["backup_stale"] = told
    return notes


def _drift(config: Config, report: Any, sent: dict[str, Any]) -> list[Notification]:
    """Drift a quiet night found (a refused night already tells it in its reason): once per user and
    version served, told again when it changes, forgotten when it ends."""
    told: dict[str, str] = dict(sent.get("drift", {}))
    drifting = {g.user: g for g in getattr(report, "gates", None) or [] if g.name == "drift"}
    found = []
    if report.notify_event is None:
        for user, gate in drifting.items():
            if told.get(user) != gate.detail:
                found.append(Notification("drift", body_for(config, "drift", report, gate="drift", user=user,
                                                            reason=gate.detail)))
    sent["drift"] = {user: gate.detail for user, gate in drifting.items()}
    return found


def _held(config: Config, store: StateStore, report: Any, sent: dict[str, Any]) -> list[Notification]:
    """Users held HELD_NIGHTS nights in a row or more: told once per streak (keyed by when it began)."""
    told: dict[str, str] = dict(sent.get("held", {}))
    streaks = store.host.load().held
    found = []
    for user, streak in streaks.items():
        key = iso(streak.since)
        if streak.nights < HELD_NIGHTS or told.get(user) == key:
            continue
        told[user] = key
        found.append(Notification("held", body_for(
            config, "held", report, gate=None, user=user, held_nights=streak.nights,
            reason=f"{user} has been held on the old version for {streak.nights} nights in a row: an agent was at "
                   f"work each time the swap came (swap.busy_wait {config.swap.busy_wait}); "
                   f"`t3track run --ignore-busy` moves {user} regardless, or ask {user} to stop it")))
    sent["held"] = {user: key for user, key in told.items() if user in streaks}
    return found


def _pending(config: Config, report: Any, sent: dict[str, Any]) -> list[Notification]:
    """A candidate left pending approval: told once per ring and version (the reason names the command)."""
    if getattr(report, "held_by", None) != "approval" or not getattr(report, "candidate", None):
        return []
    told: dict[str, str] = dict(sent.get("pending", {}))
    key = getattr(report, "ring", None) or "-"
    if told.get(key) == report.candidate:
        return []
    told[key] = report.candidate
    sent["pending"] = told
    return [Notification("pending", body_for(config, "pending", report, to=report.candidate,
                                             reason=f"pending approval: {report.reason}"))]


def notifications_for_run(config: Config, store: StateStore, report: Any, *,
                          now: datetime | None = None) -> list[Notification]:
    """What this (non-dry) run should tell the operator; remembers stale backups already told."""
    if getattr(report, "dry_run", False):
        return []
    moment = now or utcnow()
    state = store.load()
    frozen = state.frozen.reason if state.frozen is not None else None
    found: list[Notification] = []
    event = report.notify_event  # refused, rolled_back, critical (a drill: critical only)
    if event is not None:
        found.append(Notification(event, body_for(config, event, report, frozen=frozen)))
    if str(getattr(report, "outcome", "")) == "swapped" and getattr(report, "to_version", None):
        found.append(Notification("swapped", body_for(config, "swapped", report, **morning_report(report))))
    for event in _freeze_expiries(store, report):
        found.append(Notification("freeze_expired", body_for(
            config, "freeze_expired", report, gate=None, user=None,
            reason=f"the freeze ({event.get('frozen_reason')}) ended; t3track follows {config.channel} again "
                   f"({event.get('reason')})")))
    sent = _load_sent(store)
    found += _drift(config, report, sent)
    found += _held(config, store, report, sent)
    found += _pending(config, report, sent)
    for stale in _stale_backups(config, store, sent, moment):
        body = body_for(config, "backup_stale", report, gate="backup-present")
        body.update({k: redact(v) if isinstance(v, str) else v for k, v in stale.body.items()})
        found.append(Notification("backup_stale", body))
    if sent != _load_sent(store):
        _save_sent(store, sent)
    wanted = set(config.notify.on) if config.notify is not None else set()
    return [n for n in found if n.event in wanted]


def morning_report(report: Any) -> dict[str, Any]:
    """What a night that moved changed: the one-way migrations it crossed and each user's downtime."""
    one_way = sorted({m for g in getattr(report, "gates", None) or [] for m in g.one_way})
    downtime = dict(getattr(report, "downtime_s", None) or {})
    worst = max(downtime.values(), default=None)
    reason = (f"{report.from_version or 'nothing'} -> {report.to_version}"
              + (f" (ring {report.ring})" if getattr(report, "ring", None) else "")
              + (f"; one-way migrations: {', '.join(one_way)}" if one_way else "; no one-way migration")
              + (f"; longest downtime {worst:.1f}s" if worst is not None else ""))
    return {"one_way": one_way, "downtime_s": downtime, "reason": reason}


# ---------------------------------------------------------------- how to send


def webhook_label(url: str) -> str:
    """scheme://host[:port] only: the path of a chat webhook is a credential."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"


def _post(notify: NotifyConfig, body: dict[str, Any]) -> Delivery:
    assert notify.webhook is not None
    where = webhook_label(notify.webhook)
    try:
        response = httpx.post(notify.webhook, json=body, timeout=notify.timeout.total_seconds(),
                              follow_redirects=False, headers={"User-Agent": "t3track"})
    except Exception as exc:  # noqa: BLE001 - connection refused, timeout, bad URL: all just "not told"
        return Delivery(body["event"], "webhook", False, f"{where}: {type(exc).__name__}: "
                        f"{redact(str(exc)).replace(notify.webhook, where)}")
    if not 200 <= response.status_code < 300:
        return Delivery(body["event"], "webhook", False, f"{where} answered HTTP {response.status_code}")
    return Delivery(body["event"], "webhook", True, f"{where} answered HTTP {response.status_code}")


def command_argv(template: list[str], body: dict[str, Any]) -> list[str]:
    """Fill {event} {reason} ... by plain replacement (no str.format: a config must not reach attributes)."""
    argv = []
    for part in template:
        for key in PLACEHOLDERS:
            value = body.get(key)
            part = part.replace("{" + key + "}", "" if value is None else str(value))
        argv.append(part)
    return argv


def _run_command(notify: NotifyConfig, body: dict[str, Any]) -> Delivery:
    assert notify.command is not None
    argv = command_argv(notify.command, body)
    try:
        result = runner.run(argv, timeout=notify.timeout.total_seconds(), stdin=json.dumps(body) + "\n")
    except T3TrackError as exc:
        return Delivery(body["event"], "command", False, exc.message)
    if not result.ok:
        return Delivery(body["event"], "command", False, result.describe())
    return Delivery(body["event"], "command", True, f"{argv[0]} exited 0")


def apprise_label(index: int, url: str) -> str:
    """`apprise #2 (ntfy://)`: its place in notify.urls and its scheme, nothing of its tokens."""
    return f"apprise #{index + 1} ({url.split('://', 1)[0]}://)"


def _scrubbed(text: str, url: str) -> str:
    """Apprise's own words about a failure, with every part of the URL taken out."""
    after = url.split("://", 1)[-1]
    parts = {after, *(p for p in re.split(r"[/@:?&=#]+", after) if len(p) >= 3)}
    for part in sorted(parts, key=len, reverse=True):
        text = text.replace(part, "…")
    return redact(text)


def title_and_text(body: dict[str, Any]) -> tuple[str, str]:
    title = f"t3track on {body.get('host')}: {body.get('event')}"
    lines = [str(body.get("reason") or "")]
    for key in ("from", "to", "candidate", "ring", "gate", "user", "evidence", "run_id"):
        if body.get(key):
            lines.append(f"{key}: {body[key]}")
    for user, seconds in sorted((body.get("downtime_s") or {}).items()):
        lines.append(f"downtime {user}: {seconds:.1f}s")
    return title, "\n".join(line for line in lines if line)


def _apprise(notify: NotifyConfig, body: dict[str, Any]) -> list[Delivery]:
    import apprise

    title, text = title_and_text(body)
    deliveries = []
    for index, url in enumerate(notify.urls):
        label = apprise_label(index, url)
        sender = apprise.Apprise()
        with apprise.LogCapture(level=logging.WARNING) as captured:  # Apprise's log may quote the URL
            if not sender.add(url):
                deliveries.append(Delivery(body["event"], label, False, "Apprise does not understand this URL"))
                continue
            try:
                ok = bool(sender.notify(title=title, body=text))
            except Exception as exc:  # noqa: BLE001 - a plugin's own failure is only "not told"
                ok, captured_text = False, f"{type(exc).__name__}: {exc}"
            else:
                captured_text = captured.getvalue()
        detail = "sent" if ok else (_scrubbed(captured_text.strip().splitlines()[-1], url)
                                    if captured_text.strip() else "Apprise reported a failure")
        deliveries.append(Delivery(body["event"], label, ok, detail))
    return deliveries


def send(config: Config, notification: Notification) -> list[Delivery]:
    notify = config.notify
    if notify is None:
        return []
    deliveries = _apprise(notify, notification.body) if notify.urls else []
    if notify.webhook:
        deliveries.append(_post(notify, notification.body))
    if notify.command:
        deliveries.append(_run_command(notify, notification.body))
    return deliveries


def after_run(config: Config, store: StateStore, report: Any) -> list[Delivery]:
    """Build and send this run's notifications; record each delivery in history. Never raises."""
    if config.notify is None or not config.notify.configured:
        return []
    try:
        notifications = notifications_for_run(config, store, report)
    except Exception as exc:  # noqa: BLE001 - telling must never fail the run
        return [Delivery("?", "t3track", False, f"could not work out what to notify: {exc}")]
    deliveries = []
    for notification in notifications:
        for delivery in send(config, notification):
            deliveries.append(delivery)
            try:
                store.record("notify", by="t3track", run_id=getattr(report, "run_id", None),
                             notify_event=delivery.event, via=delivery.via, ok=delivery.ok, detail=delivery.detail)
            except OSError:
                pass
    return deliveries


def deliveries_problems(deliveries: list[Delivery]) -> list[str]:
    return [d.problem for d in deliveries if d.problem]

