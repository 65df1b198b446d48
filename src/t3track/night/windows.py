"""When a night may swap: inside one of `when.windows`, never on a `when.blackout` date (host's local time).

Pure time arithmetic on an injected `now` (aware) and time zone (None: the host's own, DST included),
so it is tested with any clock. Wall-clock minutes are walked in local time: a window is a local
weekday and time of day, whatever the offset that night.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo

from t3track.config import DAYS, Blackout, WhenConfig, Window

SEARCH_DAYS = 400  # a blackout range is at most about a year: beyond that there is no next window to name


@dataclass(frozen=True)
class Verdict:
    """Whether a swap may start now, and if not why and when it next may (None: never within a year)."""

    open: bool
    reason: str
    next_open: datetime | None = None
    window: str | None = None     # the window it is inside (open) or the one that opens next
    blackout: str | None = None   # the blackout it is inside


def _local(moment: datetime, tz: tzinfo | None) -> datetime:
    """`moment` as a naive local wall time."""
    return moment.astimezone(tz).replace(tzinfo=None)


def _aware(wall: datetime, tz: tzinfo | None) -> datetime:
    """A local wall time back to an aware moment (the host's zone: Python's own mktime, DST included)."""
    return wall.astimezone() if tz is None else wall.replace(tzinfo=tz)


def _opening(window: Window, day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time()) + timedelta(minutes=window.start)
    return start, start + timedelta(minutes=window.minutes)


def _inside(window: Window, wall: datetime) -> bool:
    """Inside the window that opened today, or the one that opened yesterday and runs past midnight."""
    for day in (wall.date(), wall.date() - timedelta(days=1)):
        if day.weekday() in window.days:
            start, end = _opening(window, day)
            if start <= wall < end:
                return True
    return False


def blackout_on(blackouts: list[Blackout], day: date) -> Blackout | None:
    return next((b for b in blackouts if b.first <= day <= b.last), None)


def _next_open(when: WhenConfig, wall: datetime) -> tuple[datetime, str | None] | None:
    """The first local wall time after `wall` at which a window is open on a day without blackout."""
    windows = when.windows or [Window("any time", frozenset(range(7)), 0, 1440)]
    best: tuple[datetime, str] | None = None
    for offset in range(-1, SEARCH_DAYS):
        day = wall.date() + timedelta(days=offset)
        if best is not None and datetime.combine(day, time()) > best[0]:
            break
        for window in windows:
            if day.weekday() not in window.days:
                continue
            start, end = _opening(window, day)
            moment = max(start, wall)
            while moment < end and blackout_on(when.blackout, moment.date()) is not None:
                moment = datetime.combine(moment.date() + timedelta(days=1), time())  # past the blackout day
            if moment < end and moment > wall and (best is None or moment < best[0]):
                best = (moment, window.text)
    return best


def verdict(when: WhenConfig, now: datetime, tz: tzinfo | None = None) -> Verdict:
    """May a night's swap start at `now`? Without windows or blackouts, always."""
    if not when.windows and not when.blackout:
        return Verdict(True, "no swap window or blackout is configured")
    wall = _local(now, tz)
    dark = blackout_on(when.blackout, wall.date())
    inside = next((w for w in when.windows if _inside(w, wall)), None) if when.windows else None
    if dark is None and (inside is not None or not when.windows):
        return Verdict(True, f"inside swap window {inside}" if inside else "not a blackout day", window=str(inside)
                       if inside else None)
    found = _next_open(when, wall)
    nxt = _aware(found[0], tz) if found else None
    if dark is not None:
        why = f"{wall.date().isoformat()} is a blackout day ({dark})"
    else:
        why = f"{wall:%a %H:%M} is outside every swap window ({', '.join(str(w) for w in when.windows)})"
    return Verdict(False, why + (f"; the next window opens {describe(nxt, tz)}" if nxt else
                                 "; no window opens within a year"),
                   next_open=nxt, window=found[1] if found else None, blackout=str(dark) if dark else None)


def describe(moment: datetime, tz: tzinfo | None = None) -> str:
    """`Mon 2026-12-07 02:00 +0100`: local, with its weekday and offset (an operator reads it at a glance)."""
    local = moment.astimezone(tz)
    return f"{DAYS[local.weekday()]} {local:%Y-%m-%d %H:%M %z}".strip()
