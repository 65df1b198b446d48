"""The YAML config, validated by pydantic; every problem is reported with its path."""

from __future__ import annotations

import os
import re
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, cast

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
from t3track.fastread import (  # noqa: F401  (the rules live there: status checks the config without pydantic)
    CONFIG_ENV,
    DEFAULT_CONFIG_PATH,
    GATE_NAMES,
    MAX_DURATION_S,
    MAX_SIZE,
    SERVICE_PLACEHOLDERS,
    ConfigHelpers,
    check_channel,
    check_executable,
    check_gate_order,
    check_loopback_url,
    check_metrics_path,
    check_package,
    check_registry,
    check_template,
    check_unique_users,
    check_user_name,
    check_webhook,
    config_path,
    cpu_count,
    parse_duration,
    parse_size,
)

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
        return check_user_name(value)

    @field_validator("front_door")
    @classmethod
    def _loopback_only(cls, value: str | None) -> str | None:
        return check_loopback_url(value)


class ServicesConfig(_Strict):
    stop: list[str] = Field(default_factory=lambda: ["systemctl", "stop", "t3@{user}.service"], min_length=1)
    start: list[str] = Field(default_factory=lambda: ["systemctl", "start", "t3@{user}.service"], min_length=1)
    # the server's own recent output, read when a start or a live check fails: a 0.1.x build that refused to
    # start because of the host's state says so there (see t3track.host.startlog); null: never read
    logs: list[str] | None = Field(default_factory=lambda: ["journalctl", "--no-pager", "--output=cat", "--lines=50",
                                                            "--unit", "t3@{user}.service"], min_length=1)
    timeout: Duration = timedelta(seconds=60)

    @field_validator("stop", "start")
    @classmethod
    def _templates(cls, value: list[str]) -> list[str]:
        return check_template(value, SERVICE_PLACEHOLDERS)

    @field_validator("logs")
    @classmethod
    def _logs_template(cls, value: list[str] | None) -> list[str] | None:
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
        return check_gate_order(value)


class BackupConfig(_Strict):
    timeout: Duration = timedelta(minutes=15)
    keep: int = Field(default=7, ge=1)
    keep_daily_days: int = Field(default=14, ge=0)


class SwapConfig(_Strict):
    """How a swap treats users at work: a user whose agent is working (a turn running, an approval or a
    question pending) is waited for up to `busy_wait` (one wait for every busy user together), then left
    on the old version tonight with their ring (see t3track.night.busy)."""

    busy_wait: Duration = timedelta(minutes=20)


class NotifyConfig(_Strict):
    """Where to tell the operator about a refused, rolled-back or critical run (see t3track.aftermath.notify).

    `webhook` gets a JSON POST; `command` is an argv list (no shell) with {event} {outcome} {host}
    {from} {to} {gate} {reason} {evidence} {run_id} filled in and the same JSON on stdin. Either or both."""

    webhook: str | None = None
    command: list[str] | None = Field(default=None, min_length=1)
    timeout: Duration = timedelta(seconds=10)
    host: str | None = None  # the name in notifications (default: this machine's hostname)

    @field_validator("webhook")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return check_webhook(value)


_RING_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
DEFAULT_RING = "all"  # the one ring of every user when the config names none


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


class RegistryLimitsConfig(_Strict):
    """What one registry answer may cost: decoded bytes per kind of document, and one request's
    overall deadline (retries included)."""

    dist_tags: Size = 64 << 10
    packument: Size = 32 << 20
    tarball: Size = 512 << 20
    deadline: Duration = timedelta(seconds=120)


class Config(_Strict, ConfigHelpers):
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

    @field_validator("package")
    @classmethod
    def _package_name(cls, value: str) -> str:
        return check_package(value)

    @field_validator("channel")
    @classmethod
    def _channel(cls, value: str) -> str:
        return check_channel(value)

    @field_validator("registry")
    @classmethod
    def _registry(cls, value: str | None) -> str | None:
        return check_registry(value)

    @field_validator("executable")
    @classmethod
    def _relative_executable(cls, value: str) -> str:
        return check_executable(value)

    @field_validator("metrics_path")
    @classmethod
    def _prom_file(cls, value: Path | None) -> Path | None:
        return check_metrics_path(value)

    @model_validator(mode="after")
    def _unique_users(self) -> Config:
        check_unique_users(self.users)
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
        return cast(UserConfig, ConfigHelpers.user(self, name))


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


def host_problems(config: Config) -> list[str]:
    """Problems of the host rather than the file: missing dirs, npm, users' state."""
    problems: list[str] = []
    if shutil.which("npm") is None:
        problems.append("npm: not found on PATH (t3track installs versions with npm)")
    if shutil.which("node") is None:
        problems.append("node: not found on PATH")
    for key in ("root", "state_dir", "backup_dir"):
        path: Path = getattr(config, key)
        probe = path
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if path.exists() and not path.is_dir():
            problems.append(f"{key}: {path} exists and is not a directory")
        elif not os.access(probe, os.W_OK):
            problems.append(f"{key}: {path} is not writable (nearest existing: {probe})")
    current = config.root / "current"
    if current.is_symlink() and not current.exists():
        problems.append(f"root: {current} is a dangling symlink")
    for kind in ("rings", "users"):  # the links each ring's swap flips and each user's server starts through
        links = config.root / kind
        for link in sorted(links.iterdir()) if links.is_dir() and not links.is_symlink() else []:
            if link.is_symlink() and not link.exists():
                problems.append(f"root: {link} is a dangling symlink"
                                + (f" (t3@{link.name}.service cannot start)" if kind == "users" else ""))

    if not config.users:
        problems.append("users: no users configured; nothing would be gated or verified")
    for i, user in enumerate(config.users):
        if not user.base_dir.is_dir():
            problems.append(f"users[{i}].base_dir: {user.base_dir} does not exist")
        elif not any((user.base_dir / "userdata" / name).is_file() for name in ("state.sqlite", "statev2.sqlite")) \
                and os.path.lexists(current):
            # V2 builds use statev2.sqlite (a host first installed on one has no state.sqlite at all);
            # before the first install (`t3track adopt VERSION`) nobody has served T3 here: the
            # server creates its state on its first start
            problems.append(f"users[{i}].base_dir: no userdata/state.sqlite or userdata/statev2.sqlite "
                            f"under {user.base_dir} (is {user.name}'s server running? "
                            f"`systemctl status t3@{user.name}.service`)")
        if user.run_as is not None:
            import pwd
            try:
                pwd.getpwnam(user.run_as)
            except KeyError:
                problems.append(f"users[{i}].run_as: no such Linux user {user.run_as!r}")
    for key in ("stop", "start"):
        argv = getattr(config.services, key)
        if shutil.which(argv[0]) is None and not Path(argv[0]).is_file():
            problems.append(f"services.{key}: {argv[0]!r} not found")
    return problems


# What upstream's own updater leaves on a host (t3code-contract.md, "Upstream's own updater"): it
# installs into <T3 home>/runtime/versions/<v>, repoints ~/.local/bin/t3 and, with `t3 service
# install`, runs a per-user unit that updates itself: each one fights t3track's pin.
UPDATER_TRACES = (
    ("runtime/versions", "t3home", "T3's own updater (`t3 update`) has installed versions there"),
    (".config/systemd/user/t3code.service", "home", "T3's own background service (`t3 service install`) "
     "updates and restarts the server by itself"),
    (".local/bin/t3", "home", "upstream's installer points this `t3` at its own runtime, not at root/current"),
)


def _user_home(user: UserConfig) -> Path:
    """The Linux home of a T3 user: run_as's, else the directory holding the default `.t3` base dir,
    else the base dir owner's."""
    import pwd

    if user.run_as is not None:
        try:
            return Path(pwd.getpwnam(user.run_as).pw_dir)
        except KeyError:
            pass
    if user.base_dir.name == ".t3":
        return user.base_dir.parent
    try:
        return Path(pwd.getpwuid(user.base_dir.stat().st_uid).pw_dir)
    except (OSError, KeyError):
        return user.base_dir.parent


def host_warnings(config: Config) -> list[str]:
    """Things on the host that do not stop t3track but fight it: T3's own updater and service per user."""
    warnings: list[str] = []
    if (config.root / "current").is_symlink():
        for user in config.users:
            if not os.path.lexists(config.root / "users" / user.name):
                warnings.append(f"root: {config.root / 'users' / user.name} is missing: t3@{user.name}.service "
                                "starts through it; the next `t3track run` makes it (or "
                                "systemd/t3-provision-users.sh on a host without rings)")
    for i, user in enumerate(config.users):
        home = _user_home(user)
        for relative, under, why in UPDATER_TRACES:
            path = (user.base_dir if under == "t3home" else home) / relative
            if os.path.lexists(path):
                warnings.append(f"users[{i}] ({user.name}): {path} exists: {why}, which fights t3track's pin "
                                "(a live serverVersion that is not `current` is drift); remove it "
                                "(`t3 service uninstall` as the user) and let t3track manage the version")
    return warnings
