"""The YAML config, validated by pydantic; every problem is reported with its path."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from t3track.errors import ConfigError, UsageError
from t3track.results import GATE_NAMES

DEFAULT_CONFIG_PATH = Path("/etc/t3track/config.yaml")
CONFIG_ENV = "T3TRACK_CONFIG"
SERVICE_PLACEHOLDERS = ("user", "port", "base_dir")

_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION_S = 3650 * 86400  # ten years: anything longer overflows timers and dates
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_SIZE_RE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB)?\s*$")
_SIZE_UNITS = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
MAX_SIZE = 64 << 30
_PLACEHOLDER_RE = re.compile(r"\{([^{}]*)\}")
_LOOPBACK_URL_RE = re.compile(r"^https?://(127\.\d+\.\d+\.\d+|localhost|\[::1\])(:\d+)?(/|$)")
_PACKAGE_RE = re.compile(r"^(@[a-z0-9][a-z0-9._-]*/)?[a-z0-9][a-z0-9._-]*$")
_CHANNEL_RE = re.compile(r"^[a-z][a-z0-9-]*$")
_RING_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
DEFAULT_RING = "all"  # the one ring of every user when the config names none


def parse_duration(value: Any) -> timedelta:
    """`90s`, `15m`, `6h`, `7d` (a bare integer is seconds)."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 90s, 15m, 6h or 7d")
    seconds: int | None = None
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str):
        match = _DURATION_RE.match(value)
        if match and len(match.group(1)) <= 12:
            seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds is None:
        raise ValueError(f"must be a duration such as 90s, 15m, 6h or 7d, not {str(value)[:40]!r}")
    if not 0 <= seconds <= MAX_DURATION_S:
        raise ValueError("must be between 0s and 3650d")
    return timedelta(seconds=seconds)


def parse_size(value: Any) -> int:
    """`65536`, `64KiB`, `32MiB`, `1GiB` (at most 64 GiB)."""
    if isinstance(value, bool):
        raise ValueError("must be a size such as 64KiB, 32MiB or 1GiB")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (match := _SIZE_RE.match(value)):
        size = int(match.group(1)) * _SIZE_UNITS[match.group(2)]
    else:
        raise ValueError(f"must be a size such as 64KiB, 32MiB or 1GiB, not {value!r}")
    if not 1 <= size <= MAX_SIZE:
        raise ValueError("must be between 1 byte and 64GiB")
    return size


def cpu_count() -> int:
    """CPUs this process may run on (its affinity, which a systemd CPUAffinity= or a container narrows)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def config_path(explicit: Path | None) -> Path:
    if explicit is not None:
        return explicit
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else DEFAULT_CONFIG_PATH


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]

Size = Annotated[int, BeforeValidator(parse_size)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class UserConfig(_Strict):
    name: str
    base_dir: Path
    port: int = Field(ge=1, le=65535)
    run_as: str | None = None
    front_door: str | None = None  # optional URL whose cookieless request must 302 with a t3_session cookie

    @field_validator("name", "run_as")
    @classmethod
    def _user_name(cls, value: str | None) -> str | None:
        if value is not None and not _USER_RE.match(value):
            raise ValueError("must be a Linux user name (lowercase letters, digits, _ and -)")
        return value

    @field_validator("front_door")
    @classmethod
    def _loopback_only(cls, value: str | None) -> str | None:
        if value is not None and not _LOOPBACK_URL_RE.match(value):
            raise ValueError("must be a loopback URL (http://127.0.0.1:PORT/...)")
        return value


def check_template(value: list[str], known: tuple[str, ...]) -> list[str]:
    """An argv template names only known placeholders: an unknown one would reach the command literally
    and fail at the worst moment (a `{nokey}` in services.stop, mid-swap)."""
    for part in value:
        unknown = [m for m in _PLACEHOLDER_RE.findall(part) if m not in known]
        if unknown:
            names = " ".join("{" + n + "}" for n in known)
            raise ValueError(f"{part!r} names {{{unknown[0]}}}, which is not a placeholder; known: {names}")
    return value


class ServicesConfig(_Strict):
    stop: list[str] = Field(default_factory=lambda: ["systemctl", "stop", "t3@{user}.service"], min_length=1)
    start: list[str] = Field(default_factory=lambda: ["systemctl", "start", "t3@{user}.service"], min_length=1)
    # the server's own recent output, read when a start or a live check fails: a 0.1.x build that refused to
    # start because of the host's state says so there (see t3track.host.startlog); null: never read
    logs: list[str] | None = Field(default_factory=lambda: ["journalctl", "--no-pager", "--output=cat", "--lines=50",
                                                            "--unit", "t3@{user}.service"], min_length=1)
    timeout: Duration = timedelta(seconds=60)

    @field_validator("stop", "start", "logs")
    @classmethod
    def _templates(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else check_template(value, SERVICE_PLACEHOLDERS)


class GatesConfig(_Strict):
    order: list[str] = Field(default_factory=lambda: list(GATE_NAMES), min_length=1)  # no swap without a gate
    # users gated side by side (and stopped, started and live-checked in a swap); each sandbox costs a server's memory
    parallel: int = Field(default_factory=cpu_count, ge=1, strict=True)
    backup_max_age: Duration = timedelta(hours=26)
    serve_timeout: Duration = timedelta(seconds=60)
    probe_timeout: Duration = timedelta(seconds=10)
    sessions_survive: bool = False
    max_failures: int = Field(default=3, ge=1)

    @field_validator("order")
    @classmethod
    def _known_gates(cls, value: list[str]) -> list[str]:
        unknown = [g for g in value if g not in GATE_NAMES]
        if unknown:
            raise ValueError(f"unknown gate(s) {', '.join(unknown)}; known: {', '.join(GATE_NAMES)}")
        if len(set(value)) != len(value):
            raise ValueError("a gate is listed twice")
        return value


class BackupConfig(_Strict):
    timeout: Duration = timedelta(minutes=15)
    keep: int = Field(default=7, ge=1)
    keep_daily_days: int = Field(default=14, ge=0)


NOTIFY_EVENTS = ("refused", "rolled_back", "critical", "freeze_expired", "backup_stale", "drift", "held",
                 "pending", "swapped")
NOTIFY_DEFAULT_EVENTS = [event for event in NOTIFY_EVENTS if event != "swapped"]  # the morning report is asked for


class SwapConfig(_Strict):
    """How a swap treats users at work: a user whose agent is working (a turn running, an approval or a
    question pending) is waited for up to `busy_wait` (one wait for every busy user together), then left
    on the old version tonight with their ring (see t3track.night.busy)."""

    busy_wait: Duration = timedelta(minutes=20)


class NotifyConfig(_Strict):
    """Where to tell the operator (see t3track.aftermath.notify): `urls`, Apprise URLs (`ntfy://…`,
    `gotify://…`, `slack://…`, `discord://…`, `matrix://…`, `tgram://…`, `mailto://…`, `json://…`); a
    `webhook` gets a JSON POST; `command` is an argv list (no shell) with {event} {outcome} {host}
    {from} {to} {gate} {reason} {evidence} {run_id} filled in and the same JSON on stdin. Any of them.
    `on`: the events that notify (`swapped`, the morning report, is off by default)."""

    urls: list[str] = Field(default_factory=list)
    webhook: str | None = None
    command: list[str] | None = Field(default=None, min_length=1)
    on: list[str] = Field(default_factory=lambda: list(NOTIFY_DEFAULT_EVENTS))
    timeout: Duration = timedelta(seconds=10)
    host: str | None = None  # the name in notifications (default: this machine's hostname)

    @field_validator("webhook")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        # any http(s) endpoint (chat, alertmanager, ntfy): not loopback-only like the probe URLs
        if value is not None and not re.match(r"^https?://[^\s/]+", value):
            raise ValueError("must be an http(s) URL")
        return value

    @field_validator("urls")
    @classmethod
    def _apprise_urls(cls, value: list[str]) -> list[str]:
        for i, url in enumerate(value):
            if not re.match(r"^[a-z][a-z0-9+.-]*://\S+$", url):
                # never echo the URL: it carries a token
                raise ValueError(f"entry {i + 1} is not an Apprise URL (scheme://...; see the README's notifications)")
        return value

    @field_validator("on")
    @classmethod
    def _events(cls, value: list[str]) -> list[str]:
        unknown = [event for event in value if event not in NOTIFY_EVENTS]
        if unknown:
            raise ValueError(f"unknown event(s) {', '.join(unknown)}; known: {', '.join(NOTIFY_EVENTS)}")
        return value

    @property
    def configured(self) -> bool:
        return bool(self.urls or self.webhook or self.command)


class RingConfig(_Strict):
    """One ring: users that move together. The first ring follows the channel; each later ring takes
    the newest version that served the ring before it for `soak`, every live re-check there passing."""

    name: str
    users: list[str] = Field(min_length=1)
    soak: Duration = timedelta(0)

    @field_validator("name")
    @classmethod
    def _ring_name(cls, value: str) -> str:
        if not _RING_RE.match(value):
            raise ValueError("must be a short name (lowercase letters, digits, _ and -), e.g. canary")
        return value


DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_WINDOW_RE = re.compile(r"^\s*(?:(?P<days>[A-Za-z,*-]+)\s+)?(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})\s*$")


@dataclass(frozen=True)
class Window:
    """A swap window in the host's local time: it opens on each of `days` (0 Monday .. 6 Sunday) at
    `start` (minutes after midnight) and lasts until `end`; an `end` at or before `start` is the next day."""

    text: str
    days: frozenset[int]
    start: int
    end: int

    @property
    def minutes(self) -> int:
        return self.end - self.start if self.end > self.start else 1440 - self.start + self.end

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Blackout:
    """Local dates, both ends included, on which nothing swaps."""

    text: str
    first: date
    last: date

    def __str__(self) -> str:
        return self.text


def _minutes(text: str) -> int:
    hours, minutes = (int(part) for part in text.split(":"))
    if not (0 <= hours <= 24 and 0 <= minutes <= 59) or (hours == 24 and minutes):
        raise ValueError(f"{text!r} is not a time of day (00:00 to 24:00)")
    return hours * 60 + minutes


def _days(text: str | None) -> frozenset[int]:
    if text is None or text.lower() in ("*", "daily"):
        return frozenset(range(7))
    names = {d.lower(): i for i, d in enumerate(DAYS)}
    found: set[int] = set()
    for part in text.split(","):
        ends = part.split("-")
        if len(ends) > 2 or any(e.lower()[:3] not in names or len(e) < 3 for e in ends):
            raise ValueError(f"{part!r} is not a day or a range of days ({DAYS[0]}..{DAYS[-1]}, e.g. Mon-Fri)")
        first, last = names[ends[0].lower()[:3]], names[ends[-1].lower()[:3]]
        found.update((first + i) % 7 for i in range((last - first) % 7 + 1))  # Fri-Mon goes round the weekend
    return frozenset(found)


def parse_window(value: Any) -> Window:
    """`Mon-Fri 02:00-05:00`, `Sat 22:00-02:00` (to Sunday 02:00), `Mon,Wed 01:00-03:00`, `02:00-04:00` (daily)."""
    if isinstance(value, Window):
        return value
    match = _WINDOW_RE.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"must be a window such as 'Mon-Fri 02:00-05:00', not {str(value)[:40]!r}")
    start, end = _minutes(match["start"]), _minutes(match["end"])
    if start == 1440:
        raise ValueError(f"{value!r} opens at 24:00; say 00:00 of the next day")
    if start == end:
        raise ValueError(f"{value!r} opens and closes at the same time; a whole day is 00:00-24:00")
    return Window(value.strip(), _days(match["days"]), start, end)


def parse_blackout(value: Any) -> Blackout:
    """`2026-12-24` or `2026-12-24..2027-01-02` (both days included)."""
    if isinstance(value, Blackout):
        return value
    if isinstance(value, date):  # YAML reads an unquoted 2026-12-24 as a date
        return Blackout(value.isoformat(), value, value)
    if not isinstance(value, str):
        raise ValueError(f"must be a date or a range such as 2026-12-24..2027-01-02, not {str(value)[:40]!r}")
    ends = [part.strip() for part in value.split("..")]
    try:
        first, last = date.fromisoformat(ends[0]), date.fromisoformat(ends[-1])
    except ValueError:
        raise ValueError(f"{value[:40]!r} is not a date (YYYY-MM-DD) or a range such as 2026-12-24..2027-01-02") \
            from None
    if len(ends) > 2 or last < first:
        raise ValueError(f"{value[:40]!r}: a range goes from its first day to its last, e.g. 2026-12-24..2027-01-02")
    return Blackout(value.strip(), first, last)


class WhenConfig(_Strict):
    """When a night may swap (see t3track.night.windows): inside one of `windows` (default: any time),
    never on a `blackout` date; `approval: manual` leaves a candidate that passed every gate pending
    until `t3track approve` (its gates run again first when they passed longer than approval_max_age ago).
    An operator's own moves (revert, pin, `run --to`, approve) are never held."""

    windows: list[Annotated[Window, BeforeValidator(parse_window)]] = Field(default_factory=list)
    blackout: list[Annotated[Blackout, BeforeValidator(parse_blackout)]] = Field(default_factory=list)
    approval: Literal["auto", "manual"] = "auto"
    approval_max_age: Duration = timedelta(hours=24)


HOOK_PLACEHOLDERS = (*SERVICE_PLACEHOLDERS, "from", "to", "ring", "users")


class HooksConfig(_Strict):
    """Commands around a night's swap (argv lists, no shell; placeholders filled, the same data as JSON
    on stdin): `pre_swap` after the gates, before any server stops (non-zero or a timeout stops the move,
    nothing touched); `post_swap` and `post_rollback` best effort, recorded in history."""

    pre_swap: list[str] | None = Field(default=None, min_length=1)
    post_swap: list[str] | None = Field(default=None, min_length=1)
    post_rollback: list[str] | None = Field(default=None, min_length=1)
    timeout: Duration = timedelta(seconds=60)

    @field_validator("pre_swap", "post_swap", "post_rollback")
    @classmethod
    def _templates(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else check_template(value, HOOK_PLACEHOLDERS)


class RegistryLimitsConfig(_Strict):
    """What one registry answer may cost: decoded bytes per kind of document, and one request's
    overall deadline (retries included)."""

    dist_tags: Size = 64 << 10
    packument: Size = 32 << 20
    tarball: Size = 512 << 20
    deadline: Duration = timedelta(seconds=120)


class Config(_Strict):
    package: str = "t3"
    channel: str = "nightly"
    registry: str | None = None
    registry_limits: RegistryLimitsConfig = Field(default_factory=RegistryLimitsConfig)
    executable: str = "node_modules/.bin/t3"
    root: Path = Path("/opt/t3")
    state_dir: Path = Path("/var/lib/t3track")
    backup_dir: Path = Path("/var/backups/t3track")
    keep_versions: int = Field(default=3, ge=0)
    min_release_age: Duration = timedelta(hours=6)
    install_timeout: Duration = timedelta(minutes=10)
    ignore_scripts: bool = True
    users: list[UserConfig] = Field(default_factory=list)
    services: ServicesConfig = Field(default_factory=ServicesConfig)
    gates: GatesConfig = Field(default_factory=GatesConfig)
    backup: BackupConfig = Field(default_factory=BackupConfig)
    verify_timeout: Duration = timedelta(seconds=60)
    swap: SwapConfig = Field(default_factory=SwapConfig)
    evidence_max_age: Duration = timedelta(days=30)
    notify: NotifyConfig | None = None
    # some users first: see RingConfig (default: one ring of every user, which moves at once)
    rings: list[RingConfig] | None = Field(default=None, min_length=1)
    # node_exporter textfile collector file; default state_dir/metrics/t3track.prom (see t3track.aftermath.metrics)
    metrics_path: Path | None = None
    # freeze the channel when this many consecutive nightlies fail the same way (0: never)
    fingerprint_freeze_after: int = Field(default=2, ge=0)
    when: WhenConfig = Field(default_factory=WhenConfig)  # swap windows, blackout days, approval
    hooks: HooksConfig = Field(default_factory=HooksConfig)

    @field_validator("package")
    @classmethod
    def _package_name(cls, value: str) -> str:
        if not _PACKAGE_RE.match(value):
            raise ValueError("must be an npm package name such as t3 or @scope/name")
        return value

    @field_validator("channel")
    @classmethod
    def _channel(cls, value: str) -> str:
        if value == "preview":
            raise ValueError("the preview channel is never tracked; use nightly")
        if not _CHANNEL_RE.match(value):
            raise ValueError("must be a dist-tag name such as nightly")
        return value

    @field_validator("registry")
    @classmethod
    def _registry(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://", value):
            raise ValueError("must be an http(s) URL")
        return value if value is None or value.endswith("/") else value + "/"

    @field_validator("executable")
    @classmethod
    def _relative_executable(cls, value: str) -> str:
        if value.startswith("/") or ".." in Path(value).parts:
            raise ValueError("must be a path relative to an install prefix, without '..'")
        return value

    @field_validator("metrics_path")
    @classmethod
    def _prom_file(cls, value: Path | None) -> Path | None:
        if value is not None and (not value.is_absolute() or value.suffix != ".prom"):
            raise ValueError("must be an absolute path ending in .prom (node_exporter reads only *.prom files)")
        return value

    @model_validator(mode="after")
    def _unique_users(self) -> Config:
        names = [u.name for u in self.users]
        ports = [u.port for u in self.users]
        if len(set(names)) != len(names):
            raise ValueError("users: a user name is listed twice")
        if len(set(ports)) != len(ports):
            raise ValueError("users: two users share a port")
        return self

    @model_validator(mode="after")
    def _rings_cover_users(self) -> Config:
        if self.rings is None:
            return self
        known = [u.name for u in self.users]
        seen: dict[str, str] = {}
        if len({r.name for r in self.rings}) != len(self.rings):
            raise ValueError("rings: a ring name is listed twice")
        if self.rings[0].soak:
            raise ValueError(f"rings[0].soak: the first ring ({self.rings[0].name}) follows the channel; "
                             "a soak applies to the rings after it")
        for ring in self.rings:
            for name in ring.users:
                if name not in known:
                    raise ValueError(f"rings: {ring.name} names {name!r}, which is not in users")
                if name in seen:
                    raise ValueError(f"rings: {name} is in both {seen[name]} and {ring.name}; "
                                     "every user is in exactly one ring")
                seen[name] = ring.name
        missing = [n for n in known if n not in seen]
        if missing:
            raise ValueError(f"rings: {', '.join(missing)} in no ring; every user is in exactly one ring")
        return self

    # -------------------------------------------------------------- rings

    _ring: str | None = PrivateAttr(default=None)  # set on a ring's view (see `ring_view`)
    _host: Config | None = PrivateAttr(default=None)

    def ring_configs(self) -> list[RingConfig]:
        """The rings in order; without `rings`, one ring of every user."""
        if self.rings is not None:
            return list(self.rings)
        # constructed, not validated: a config without users (a new host being written) has one empty ring
        return [RingConfig.model_construct(name=DEFAULT_RING, users=[u.name for u in self.users], soak=timedelta(0))]

    @property
    def ringed(self) -> bool:
        """More than one ring: users move at different times."""
        return self.rings is not None and len(self.rings) > 1

    def ring_names(self) -> list[str]:
        return [r.name for r in self.ring_configs()]

    def ring_config(self, name: str) -> RingConfig:
        for ring in self.ring_configs():
            if ring.name == name:
                return ring
        raise ConfigError(f"no ring named {name!r} in the config",
                          hint=f"known rings: {', '.join(self.ring_names())}")

    def require_ring(self, ring: str) -> RingConfig:
        """A --ring this config names: exit 2 listing the rings, or saying the host has none."""
        if not self.ringed:
            raise UsageError(f"this host has no rings (config `rings`): drop --ring {ring}",
                             hint="without rings every user moves at once")
        return self.ring_config(ring)

    def ring_of(self, user: str) -> str:
        return next(r.name for r in self.ring_configs() if user in r.users)

    @property
    def ring(self) -> str | None:
        """The ring this view moves (None: the whole host)."""
        return self._ring

    @property
    def first_ring(self) -> str:
        return self.ring_configs()[0].name

    def ring_view(self, name: str) -> Config:
        """This config seen by one ring's move: its users only, and `ring` set (which `current` link a
        swap flips, see host.tree). The whole host's view is the config itself."""
        ring = self.ring_config(name)
        host = self.host
        view = host.model_copy(update={"users": [u for u in host.users if u.name in ring.users]})
        view._ring, view._host = name, host
        return view

    @property
    def host(self) -> Config:
        """The whole host's view of a ring's view (itself when it is one)."""
        return self._host if self._host is not None else self

    def user(self, name: str) -> UserConfig:
        for user in self.users:
            if user.name == name:
                return user
        raise ConfigError(f"no user named {name!r} in the config",
                          hint=f"known users: {', '.join(u.name for u in self.users) or 'none'}")

    def executable_in(self, prefix: Path) -> Path:
        return prefix / self.executable

    def metrics_file(self) -> Path:
        return self.metrics_path if self.metrics_path is not None else self.state_dir / "metrics" / "t3track.prom"


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before") or str(part).startswith("function-"):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _message(err: Any) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "is required"
    if kind.startswith("int_"):
        return "must be an integer"
    if kind.startswith("bool"):
        return "must be true or false"
    if kind.startswith("list"):
        return "must be a list"
    if kind.startswith("string"):
        return "must be a string"
    if kind in ("model_type", "dict_type"):
        return "must be a mapping"
    if kind == "greater_than_equal":
        return f"must be at least {err.get('ctx', {}).get('ge')}"
    msg = str(err.get("msg", "invalid"))
    return msg.removeprefix("Value error, ")


def format_validation_error(exc: ValidationError) -> list[str]:
    return [f"{_loc(tuple(e['loc']))}: {_message(e)}" for e in exc.errors()]


def parse_config(data: Any, source: str = "config") -> Config:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys", problems=["(top level): must be a mapping"])
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = format_validation_error(exc)
        raise ConfigError(f"{source} has {len(problems)} problem(s)", problems=problems,
                          hint="fix the keys listed and run `t3track config check`") from None


def load_config(explicit: Path | None = None) -> Config:
    path = config_path(explicit)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist",
                          hint=f"pass --config PATH, set ${CONFIG_ENV}, or create {DEFAULT_CONFIG_PATH}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path} is not valid YAML{where}",
                          problems=[f"(yaml){where}: {getattr(exc, 'problem', exc)}"]) from None
    return parse_config(data, str(path))
