"""config.yaml and state.json read without pydantic, for `t3track status` (it must start in ~0.1 s).

pydantic's import and the building of the config's and the state's models cost more than all that
status reads. Both files are root's (t3track writes state.json; the operator writes the config): no
user controls a byte of them. Still, nothing here trusts them more than the models do. Each reader
accepts a document only when it is, plainly, one the models accept: the canonical type of every
field (a str where a str goes, an int that is not a bool, the timestamps t3track writes), every
rule of the models (the same functions, defined here and used by t3track.config), no unknown key.
Then it gives the same values, defaults included. For anything else, valid in a spelling it does not
know or not valid at all, it answers None and the caller validates with the models, which accept it
or fail with their usual messages: this path never widens what is accepted (tests/test_fastread.py
holds it to the models, field by field and value by value).
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

from t3track.errors import ConfigError

if TYPE_CHECKING:
    from t3track.config import Config
    from t3track.state import State, StateStore

DEFAULT_CONFIG_PATH = Path("/etc/t3track/config.yaml")
CONFIG_ENV = "T3TRACK_CONFIG"
GATE_NAMES = ("backup-present", "sandbox-serve", "pairing-probe")
SERVICE_PLACEHOLDERS = ("user", "port", "base_dir")

# ---------------------------------------------------------------- the config's rules (t3track.config uses these)
# Patterns are strings, compiled by `re` at their first use (and cached there), as the inline ones
# below: status checks a few of them only, and compiling the rest cost every start.

_DURATION_RE = r"^\s*(\d+)\s*([smhd])\s*$"
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION_S = 3650 * 86400  # ten years: anything longer overflows timers and dates
_USER_RE = r"^[a-z_][a-z0-9_-]{0,31}$"
_SIZE_RE = r"^\s*(\d+)\s*(B|KiB|MiB|GiB)?\s*$"
_SIZE_UNITS = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
MAX_SIZE = 64 << 30
_PLACEHOLDER_RE = r"\{([^{}]*)\}"


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
        match = re.match(_DURATION_RE, value)
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
    elif isinstance(value, str) and (match := re.match(_SIZE_RE, value)):
        size = int(match.group(1)) * _SIZE_UNITS[match.group(2)]
    else:
        raise ValueError(f"must be a size such as 64KiB, 32MiB or 1GiB, not {value!r}")
    if not 1 <= size <= MAX_SIZE:
        raise ValueError("must be between 1 byte and 64GiB")
    return size


def check_template(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """An argv template may name only `names` ({user}, ...): an unknown one would reach the command
    literally and fail at the worst moment (a `{nokey}` in services.stop, mid-swap)."""
    for part in argv:
        unknown = [m for m in re.findall(_PLACEHOLDER_RE, part) if m not in names]
        if unknown:
            known = " ".join("{" + n + "}" for n in names)
            raise ValueError(f"{part!r} names {{{unknown[0]}}}, which is not a placeholder; known: {known}")
    return argv


def check_user_name(value: str | None) -> str | None:
    if value is not None and not re.match(_USER_RE, value):
        raise ValueError("must be a Linux user name (lowercase letters, digits, _ and -)")
    return value


def check_loopback_url(value: str | None) -> str | None:
    if value is not None and not re.match(r"^https?://(127\.\d+\.\d+\.\d+|localhost|\[::1\])(:\d+)?(/|$)", value):
        raise ValueError("must be a loopback URL (http://127.0.0.1:PORT/...)")
    return value


def check_gate_order(value: list[str]) -> list[str]:
    unknown = [g for g in value if g not in GATE_NAMES]
    if unknown:
        raise ValueError(f"unknown gate(s) {', '.join(unknown)}; known: {', '.join(GATE_NAMES)}")
    if len(set(value)) != len(value):
        raise ValueError("a gate is listed twice")
    return value


def check_webhook(value: str | None) -> str | None:
    # any http(s) endpoint (chat, alertmanager, ntfy): not loopback-only like the probe URLs
    if value is not None and not re.match(r"^https?://[^\s/]+", value):
        raise ValueError("must be an http(s) URL")
    return value


def check_package(value: str) -> str:
    if not re.match(r"^(@[a-z0-9][a-z0-9._-]*/)?[a-z0-9][a-z0-9._-]*$", value):
        raise ValueError("must be an npm package name such as t3 or @scope/name")
    return value


def check_channel(value: str) -> str:
    if value == "preview":
        raise ValueError("the preview channel is never tracked; use nightly")
    if not re.match(r"^[a-z][a-z0-9-]*$", value):
        raise ValueError("must be a dist-tag name such as nightly")
    return value


def check_registry(value: str | None) -> str | None:
    if value is not None and not re.match(r"^https?://", value):
        raise ValueError("must be an http(s) URL")
    return value if value is None or value.endswith("/") else value + "/"


def check_executable(value: str) -> str:
    if value.startswith("/") or ".." in Path(value).parts:
        raise ValueError("must be a path relative to an install prefix, without '..'")
    return value


def check_metrics_path(value: Path | None) -> Path | None:
    if value is not None and (not value.is_absolute() or value.suffix != ".prom"):
        raise ValueError("must be an absolute path ending in .prom (node_exporter reads only *.prom files)")
    return value


def check_unique_users(users: list[Any]) -> None:
    names = [u.name for u in users]
    ports = [u.port for u in users]
    if len(set(names)) != len(names):
        raise ValueError("users: a user name is listed twice")
    if len(set(ports)) != len(ports):
        raise ValueError("users: two users share a port")


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


# ---------------------------------------------------------------- the config, checked by hand


class _Unsure(Exception):
    """Not plainly valid: the models decide."""


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise _Unsure
    return value


def _int(lo: int | None = None, hi: int | None = None) -> Any:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or (lo is not None and value < lo) \
                or (hi is not None and value > hi):
            raise _Unsure
        return value
    return check


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Unsure
    return value


def _path(value: Any) -> Path:
    if not isinstance(value, str) or not value or "\0" in value:
        raise _Unsure
    return Path(value)


def _argv(value: Any) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise _Unsure
    return list(value)


def _optional(check: Any) -> Any:
    return lambda value: None if value is None else check(value)


def _ruled(check: Any, rule: Any) -> Any:
    def both(value: Any) -> Any:
        try:
            return rule(check(value))
        except ValueError:
            raise _Unsure from None
    return both


_duration = _ruled(lambda v: v, parse_duration)
_size = _ruled(lambda v: v, parse_size)
_REQUIRED = object()


class _View(SimpleNamespace):
    pass


class ConfigHelpers:
    """What Config and ConfigView both answer from their fields (one definition for both)."""

    def user(self: Any, name: str) -> Any:
        for user in self.users:
            if user.name == name:
                return user
        raise ConfigError(f"no user named {name!r} in the config",
                          hint=f"known users: {', '.join(u.name for u in self.users) or 'none'}")

    def executable_in(self: Any, prefix: Path) -> Path:
        return cast(Path, prefix / self.executable)

    def metrics_file(self: Any) -> Path:
        return cast(Path, self.metrics_path if self.metrics_path is not None else
                    self.state_dir / "metrics" / "t3track.prom")


class ConfigView(ConfigHelpers, _View):
    """The config as Config has it, for reading: the same attributes and helpers. Only a host without
    rings reads this way (a `rings` key is not known here: the models decide), so it is the whole
    host's view of one ring."""

    ring = None
    ringed = False

    @property
    def host(self) -> ConfigView:
        return self


def _model(fields: dict[str, tuple[Any, Any]], cls: type = _View, *, known_keys_only: bool = True) -> Any:
    """A checker of one mapping: `fields` {key: (default or _REQUIRED, checker)}; defaults are
    callables (a fresh value each time, as the models' default factories). `known_keys_only=False`:
    unknown keys are ignored (as the state's models do), not a doubt."""
    def check(value: Any) -> Any:
        if not isinstance(value, dict) or known_keys_only and any(not isinstance(k, str) or k not in fields
                                                                   for k in value):
            raise _Unsure
        out = {}
        for key, (default, checker) in fields.items():
            if key in value:
                out[key] = checker(value[key])
            elif default is _REQUIRED:
                raise _Unsure
            else:
                out[key] = default()
        return cls(**out)
    return check


def _const(value: Any) -> Any:
    return lambda: value


_USER = _model({
    "name": (_REQUIRED, _ruled(_str, check_user_name)),
    "base_dir": (_REQUIRED, _path),
    "port": (_REQUIRED, _int(1, 65535)),
    "run_as": (_const(None), _ruled(_optional(_str), check_user_name)),
    "front_door": (_const(None), _ruled(_optional(_str), check_loopback_url)),
})
_SERVICES = _model({
    "stop": (lambda: ["systemctl", "stop", "t3@{user}.service"],
             _ruled(_argv, lambda v: check_template(v, SERVICE_PLACEHOLDERS))),
    "start": (lambda: ["systemctl", "start", "t3@{user}.service"],
              _ruled(_argv, lambda v: check_template(v, SERVICE_PLACEHOLDERS))),
    "logs": (lambda: ["journalctl", "--no-pager", "--output=cat", "--lines=50", "--unit", "t3@{user}.service"],
             _optional(_ruled(_argv, lambda v: check_template(v, SERVICE_PLACEHOLDERS)))),
    "timeout": (_const(timedelta(seconds=60)), _duration),
})
_SWAP = _model({
    "busy_wait": (_const(timedelta(minutes=20)), _duration),
})
_GATES = _model({
    "order": (lambda: list(GATE_NAMES), _ruled(_argv, check_gate_order)),
    "parallel": (cpu_count, _int(1)),
    "backup_max_age": (_const(timedelta(hours=26)), _duration),
    "serve_timeout": (_const(timedelta(seconds=60)), _duration),
    "probe_timeout": (_const(timedelta(seconds=10)), _duration),
    "sessions_survive": (_const(False), _bool),
    "max_failures": (_const(3), _int(1)),
})
_BACKUP = _model({
    "timeout": (_const(timedelta(minutes=15)), _duration),
    "keep": (_const(7), _int(1)),
    "keep_daily_days": (_const(14), _int(0)),
})
_NOTIFY = _model({
    "webhook": (_const(None), _ruled(_optional(_str), check_webhook)),
    "command": (_const(None), _optional(_argv)),
    "timeout": (_const(timedelta(seconds=10)), _duration),
    "host": (_const(None), _optional(_str)),
})
_REGISTRY_LIMITS = _model({
    "dist_tags": (_const(64 << 10), _size),
    "packument": (_const(32 << 20), _size),
    "tarball": (_const(512 << 20), _size),
    "deadline": (_const(timedelta(seconds=120)), _duration),
})


def _nothing(value: Any) -> None:
    """A key this path leaves to the models whenever it holds anything."""
    if value is not None and value != {}:
        raise _Unsure
    return None


def _no_rings(value: Any) -> dict[str, Any]:
    _nothing(value)
    return {}


def _users(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise _Unsure
    users = [_USER(v) for v in value]
    try:
        check_unique_users(users)
    except ValueError:
        raise _Unsure from None
    return users


def _none_held(value: Any) -> dict[str, Any]:
    """No user held (`{}`): anything else is the models' to read."""
    if value != {}:
        raise _Unsure
    return {}


_CONFIG = _model({
    "package": (_const("t3"), _ruled(_str, check_package)),
    "channel": (_const("nightly"), _ruled(_str, check_channel)),
    "registry": (_const(None), _ruled(_optional(_str), check_registry)),
    "registry_limits": (lambda: _REGISTRY_LIMITS({}), _REGISTRY_LIMITS),
    "executable": (_const("node_modules/.bin/t3"), _ruled(_str, check_executable)),
    "root": (_const(Path("/opt/t3")), _path),
    "state_dir": (_const(Path("/var/lib/t3track")), _path),
    "backup_dir": (_const(Path("/var/backups/t3track")), _path),
    "keep_versions": (_const(3), _int(0)),
    "min_release_age": (_const(timedelta(hours=6)), _duration),
    "install_timeout": (_const(timedelta(minutes=10)), _duration),
    "ignore_scripts": (_const(True), _bool),
    "users": (list, _users),
    "services": (lambda: _SERVICES({}), _SERVICES),
    "gates": (lambda: _GATES({}), _GATES),
    "backup": (lambda: _BACKUP({}), _BACKUP),
    "verify_timeout": (_const(timedelta(seconds=60)), _duration),
    "swap": (lambda: _SWAP({}), _SWAP),
    "evidence_max_age": (_const(timedelta(days=30)), _duration),
    "notify": (_const(None), _optional(_NOTIFY)),
    "metrics_path": (_const(None), _ruled(_optional(_path), check_metrics_path)),
    "fingerprint_freeze_after": (_const(2), _int(0)),
    "rings": (_const(None), _nothing),  # rings: the models' to read
}, ConfigView)


def config_view(data: Any) -> ConfigView | None:
    """The parsed YAML as the models would have it, or None when they must decide."""
    try:
        return cast(ConfigView, _CONFIG({} if data is None else data))
    except _Unsure:
        return None


# yaml.reader compiles this class of every printable code point at import (~7 ms, half of PyYAML's
# import), for its pure-Python Reader alone: the C loader status reads with checks it in libyaml.
_YAML_NON_PRINTABLE = "[^\x09\x0A\x0D\x20-\x7E\x85\xA0-\uD7FF\uE000-\uFFFD\U00010000-\U0010ffff]"


class _CompiledOnUse:
    """Stands for `re.compile(pattern, flags)`, compiled (and cached by re) when first used."""

    def __init__(self, pattern: str, flags: int):
        self._args = (pattern, flags)

    def __getattr__(self, name: str) -> Any:  # search, match, pattern...: the compiled pattern's
        return getattr(re.compile(*self._args), name)


def import_yaml() -> Any:
    """PyYAML, imported with yaml.reader's NON_PRINTABLE compiled at its first use, not at import.
    Only that one pattern is deferred (any other, or another PyYAML's, compiles as usual), and the
    pure Reader uses it unchanged when it runs (t3track.config's safe_load, the C loader's absence).
    re.compile is swapped for the import alone, before status starts any thread."""
    if "yaml" in sys.modules:
        return sys.modules["yaml"]
    compile_ = re.compile

    def compile_reader_pattern_on_use(pattern: Any, flags: int = 0) -> Any:
        if pattern == _YAML_NON_PRINTABLE and not flags:
            return _CompiledOnUse(pattern, flags)
        return compile_(pattern, flags)

    re.compile = compile_reader_pattern_on_use
    try:
        import yaml
    finally:
        re.compile = compile_
    return yaml


def load_config(explicit: Path | None = None) -> Config:
    """t3track.config.load_config's answer, without pydantic when the file is plainly valid (its
    C YAML parser when built; any doubt, or any error, goes the models' way with their messages)."""
    path = config_path(explicit)
    view = None
    try:
        yaml = import_yaml()

        text = path.read_text(encoding="utf-8")
        view = config_view(yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))  # noqa: S506
    except Exception:  # unreadable, not YAML: the models' way says what is wrong, as always
        view = None
    if view is not None:
        return cast("Config", view)
    from t3track import config

    return config.load_config(explicit)


# ---------------------------------------------------------------- state.json, checked by hand

STATE_FILE = "state.json"
JOURNAL_FILE = "journal.json"
_MOMENT_RE = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$"


def _version(value: Any) -> str:
    from t3track import versions

    if not isinstance(value, str) or not versions.is_valid(value):
        raise _Unsure
    return value


def _moment(value: Any) -> datetime:
    """A timestamp as t3track writes them (ISO 8601 with an offset), as the models make it (UTC)."""
    if not isinstance(value, str) or not re.match(_MOMENT_RE, value):
        raise _Unsure
    try:
        moment = datetime.fromisoformat(value).astimezone(UTC)
    except (ValueError, OverflowError):
        raise _Unsure from None
    return moment


@dataclass
class Pin:
    version: str
    reason: str
    by: str
    at: datetime


@dataclass
class Freeze:
    reason: str
    by: str
    at: datetime
    until: datetime | None = None

    def expired(self, now: datetime) -> bool:
        return self.until is not None and now >= self.until


@dataclass
class Denial:
    version: str
    reason: str
    gate: str | None
    at: datetime
    by: str | None
    evidence: str | None
    fingerprint: str | None


@dataclass
class LastRun:
    at: datetime
    outcome: str
    candidate: str | None
    exit_code: int
    run_id: str | None
    ring: str | None


def _record(cls: type, fields: dict[str, tuple[Any, Any]]) -> Any:
    """A state record: unknown keys ignored (as the models do), `fields` as in _model."""
    return _model(fields, cls, known_keys_only=False)


_opt_str = _optional(_str)
_none = _const(None)
_PIN = _record(Pin, {"version": (_REQUIRED, _version), "reason": (_REQUIRED, _str), "by": (_REQUIRED, _str),
                     "at": (_REQUIRED, _moment)})
_FREEZE = _record(Freeze, {"reason": (_REQUIRED, _str), "by": (_REQUIRED, _str), "at": (_REQUIRED, _moment),
                           "until": (_none, _optional(_moment))})
_DENIAL = _record(Denial, {"version": (_REQUIRED, _version), "reason": (_REQUIRED, _str), "gate": (_none, _opt_str),
                           "at": (_REQUIRED, _moment), "by": (_none, _opt_str), "evidence": (_none, _opt_str),
                           "fingerprint": (_none, _opt_str)})
_LAST_RUN = _record(LastRun, {"at": (_REQUIRED, _moment), "outcome": (_REQUIRED, _str),
                              "candidate": (_none, _opt_str), "exit_code": (_REQUIRED, _int()),
                              "run_id": (_none, _opt_str), "ring": (_none, _opt_str)})


def _list_of(check: Any) -> Any:
    def each(value: Any) -> list[Any]:
        if not isinstance(value, list):
            raise _Unsure
        return [check(v) for v in value]
    return each


def _versions_to(check: Any) -> Any:
    def each(value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise _Unsure
        return {_version(k): check(v) for k, v in value.items()}
    return each


_STATE = _record(_View, {
    "schema_version": (_const(1), _int()),
    "current": (_none, _optional(_version)),
    "previous": (_none, _optional(_version)),
    "pinned": (_none, _optional(_PIN)),
    "frozen": (_none, _optional(_FREEZE)),
    "denied": (list, _list_of(_DENIAL)),
    "first_seen": (dict, _versions_to(_moment)),
    "failures": (dict, _versions_to(_int())),
    "last_run": (_none, _optional(_LAST_RUN)),
    "current_snapshot": (_none, _opt_str),
    "rings": (dict, _no_rings),  # a host with rings: the models' to read
    "held": (dict, _none_held),  # users held by their agents' work: the models' to read
})


def state_view(data: Any) -> Any:
    """The parsed state.json as the models would have it, or None when they must decide."""
    try:
        return _STATE(data)
    except _Unsure:
        return None


class StatePaths:
    """Where state_dir keeps state.json and the swap journal: StateStore's, and StateReader's."""

    def __init__(self, state_dir: Path):
        self.dir = state_dir

    @property
    def state_path(self) -> Path:
        return self.dir / STATE_FILE

    @property
    def journal_path(self) -> Path:
        return self.dir / JOURNAL_FILE


class StateReader(StatePaths):
    """What status asks of a StateStore (load, journal_path), without pydantic when state.json is
    plainly valid; anything else is StateStore's to read, with its errors."""

    def load(self) -> State:
        try:
            raw = self.state_path.read_bytes()
        except FileNotFoundError:
            return cast("State", state_view({}))
        except OSError:
            raw = None
        view = None
        if raw is not None:
            try:
                view = state_view(json.loads(raw.decode("utf-8", errors="replace")))
            except (ValueError, RecursionError):
                view = None
        if view is not None:
            return cast("State", view)
        from t3track.state import StateStore

        return StateStore(self.dir).load()


def state_reader(state_dir: Path) -> StateStore:
    return cast("StateStore", StateReader(state_dir))
