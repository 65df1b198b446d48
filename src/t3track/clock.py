"""Time, in one place: UTC now, ISO-8601 text (second precision, `Z`), and file-name stamps."""

from __future__ import annotations

from datetime import UTC, datetime

STAMP_FORMAT = "%Y%m%dT%H%M%SZ"  # run ids, backup and snapshot directory names


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    """An ISO date or time; naive means UTC. Raises ValueError."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def stamp(moment: datetime | None = None) -> str:
    return (moment or utcnow()).astimezone(UTC).strftime(STAMP_FORMAT)


def as_utc(moment: datetime | None) -> datetime:
    """`moment` as an aware UTC datetime; None means now."""
    if moment is None:
        return utcnow()
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def human_age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    seconds = max(0, int(seconds))
    if seconds >= 86400:
        return f"{seconds // 86400}d{(seconds % 86400) // 3600}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h{(seconds % 3600) // 60}m"
    if seconds >= 60:
        return f"{seconds // 60}m"
    return f"{seconds}s"
