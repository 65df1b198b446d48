"""An emulated T3 Code host for end-to-end tests and the demo.

Builds, under one directory: a loopback npm registry with emulator builds of `t3` published as
nightlies, a `root/` with `versions/` and the `current` symlink, users with real SQLite state whose
"production" servers run under tests/support/supervisor.py (what `services.start/stop` call), and a
config file pointing t3track at all of it. Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from tests.emulator import package as emu
from tests.support.registry_server import RegistryServer

REPO = Path(__file__).resolve().parents[2]
SUPERVISOR = Path(__file__).resolve().with_name("supervisor.py")
EMULATOR_EXECUTABLE = emu.EXECUTABLE


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def nightly(n: int, base: str = "0.0.43", day: int = 20261101) -> str:
    """A nightly version string: nightly(1) == '0.0.43-nightly.20261101.3001'."""
    return f"{base}-nightly.{day + n}.{3000 + n}"


@dataclass
class HostUser:
    name: str
    port: int
    base_dir: Path

    @property
    def db(self) -> Path:
        """The database the user's server uses: statev2.sqlite once a V2 build created it."""
        return emu.live_db(self.base_dir)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class ExternalRegistry:
    """A registry this host does not run (e.g. verdaccio in the CI smoke): its URL, nothing to stop.
    Publish to it with its own tools (`npm publish`); Host.publish works only on a RegistryServer."""
    url: str

    def publish(self, *_args: Any, **_kwargs: Any) -> str:
        raise NotImplementedError(f"publish to {self.url} with `npm publish`, not through the test host")

    def stop(self) -> None:
        pass


@dataclass
class Host:
    dir: Path
    registry: RegistryServer | ExternalRegistry
    users: list[HostUser]
    overrides: dict[str, Any] = field(default_factory=dict)
    through: str = "users"  # what the emulated t3@.service starts through: root/users/<user>, or root/current (before rings)
    layout: str = "single"  # "single": one package `t3`; "release": the launcher and its platform package, as upstream ships

    @property
    def executable(self) -> str:
        return emu.RELEASE_EXECUTABLE if self.layout == "release" else EMULATOR_EXECUTABLE

    # ------------------------------------------------------------ layout

    @property
    def root(self) -> Path:
        return self.dir / "root"

    @property
    def state_dir(self) -> Path:
        return self.dir / "state"

    @property
    def backup_dir(self) -> Path:
        return self.dir / "backups"

    @property
    def run_dir(self) -> Path:
        return self.dir / "run"

    @property
    def config_path(self) -> Path:
        return self.dir / "config.yaml"

    def user(self, name: str) -> HostUser:
        return next(u for u in self.users if u.name == name)

    def config_dict(self) -> dict[str, Any]:
        start = [sys.executable, str(SUPERVISOR), "start", "--user", "{user}", "--port", "{port}",
                 "--base-dir", "{base_dir}", "--root", str(self.root), "--executable", self.executable,
                 "--run-dir", str(self.run_dir), "--through", self.through]
        stop = [sys.executable, str(SUPERVISOR), "stop", "--user", "{user}", "--run-dir", str(self.run_dir)]
        data: dict[str, Any] = {
            "package": "t3",
            "channel": "nightly",
            "registry": self.registry.url,
            "executable": self.executable,
            "root": str(self.root),
            "state_dir": str(self.state_dir),
            "backup_dir": str(self.backup_dir),
            "min_release_age": "0s",  # soak is covered by the policy tests; nights here are instant
            "users": [{"name": u.name, "base_dir": str(u.base_dir), "port": u.port} for u in self.users],
            "services": {"start": start, "stop": stop, "timeout": "30s"},
            "gates": {"serve_timeout": "20s", "probe_timeout": "10s"},
            "verify_timeout": "20s",
        }
        for key, value in self.overrides.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return data

    def write_config(self, **overrides: Any) -> Path:
        self.overrides.update(overrides)
        self.config_path.write_text(yaml.safe_dump(self.config_dict(), sort_keys=False))
        return self.config_path

    def config(self):
        from t3track.config import load_config

        return load_config(self.config_path)

    # ------------------------------------------------------------ builds

    def publish(self, version: str, *, era: str = "B", migrations: int = 52, fault: str | None = None,
                age: timedelta = timedelta(days=1), tag: str | None = "nightly", **extra: Any) -> str:
        """Publish an emulator build of `t3` as `version`, `age` old (`extra`: V2-era emulator.json keys);
        in the release layout, its platform package too."""
        if self.layout == "release":
            tarballs = emu.release_tarballs(version, era=era, migrations=migrations, fault=fault, **extra)
            self.registry.publish(emu.PLATFORM_PACKAGE, version, tarballs[emu.PLATFORM_PACKAGE])
            tarball = tarballs[emu.PACKAGE]
        else:
            tarball = emu.tarball_bytes(version, era=era, migrations=migrations, fault=fault, **extra)
        return self.registry.publish("t3", version, tarball, tag=tag,
                                     published_at=datetime.now(UTC) - age)

    def set_fault(self, version: str, fault: str | None) -> None:
        """Change an installed build's behaviour (e.g. a nightly that fails only once live)."""
        self.set_emulator(version, fault=fault)

    def set_emulator(self, version: str, **changes: Any) -> None:
        """Change any emulator.json key of an installed build."""
        path = self.root / "versions" / version / Path(self.executable).parent / "emulator.json"
        data = json.loads(path.read_text())
        data.update(changes)
        path.write_text(json.dumps(data))

    # ------------------------------------------------------------ running

    def t3track(self, *args: str, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "t3track", "--config", str(self.config_path), *args]
        full_env = dict(os.environ, **(env or {}))
        full_env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + full_env.get("PYTHONPATH", "")
        return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout)

    def service(self, action: str, user: HostUser) -> None:
        argv = self.config_dict()["services"][action]
        values = {"user": user.name, "port": str(user.port), "base_dir": str(user.base_dir)}
        subprocess.run([a.format(**values) for a in argv], check=True, timeout=30)

    def start_servers(self) -> None:
        for user in self.users:
            self.service("start", user)
        for user in self.users:
            wait_for_version(user.url, None, timeout=20)

    def stop_servers(self) -> None:
        for user in self.users:
            self.service("stop", user)

    def server_pids(self) -> dict[str, int]:
        pids = {}
        for user in self.users:
            try:
                pids[user.name] = int((self.run_dir / f"{user.name}.pid").read_text())
            except (FileNotFoundError, ValueError):
                pass
        return pids

    def current_target(self) -> str | None:
        link = self.root / "current"
        return os.readlink(link) if link.is_symlink() else None

    def linked(self, user: HostUser) -> str | None:
        """The version user's server starts: root/users/<user>, through its ring's link."""
        link = self.root / "users" / user.name
        if not link.is_symlink():
            return None
        return Path(os.path.realpath(link)).name

    def serving(self, user: HostUser) -> str | None:
        return serving_version(user.url)

    # ------------------------------------------------------------ state

    def rows(self, user: HostUser) -> list[tuple]:
        with sqlite3.connect(f"file:{user.db}?mode=ro", uri=True) as conn:
            return conn.execute(f"SELECT * FROM {emu.ROWS_TABLE} ORDER BY 1").fetchall()

    def write_rows(self, user: HostUser, count: int, tag: str) -> None:
        emu.add_rows(user.db, count, tag)

    def max_migration(self, user: HostUser) -> int | None:
        from t3track.host.sqlite import max_migration_id

        return max_migration_id(user.db)

    def history(self) -> list[dict[str, Any]]:
        path = self.state_dir / "history.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def state(self) -> dict[str, Any]:
        return json.loads((self.state_dir / "state.json").read_text())

    def assert_settled(self, serving: str, rows: dict[str, list[tuple]]) -> None:
        """Every user served by `serving`, the link and state agree, no journal, no row of `rows` (user ->
        rows read before) lost."""
        assert self.current_target() == f"versions/{serving}"
        assert self.state()["current"] == serving
        assert not (self.state_dir / "journal.json").exists()
        for user in self.users:
            assert wait_for_version(user.url, serving, timeout=20) == serving
            assert set(rows[user.name]) <= set(self.rows(user))

    def close(self) -> None:
        self.stop_servers()
        self.registry.stop()


def serving_version(url: str) -> str | None:
    import httpx

    try:
        response = httpx.get(url + "/.well-known/t3/environment", timeout=2)
        return response.json().get("serverVersion") if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, AttributeError):
        return None


def wait_for_version(url: str, version: str | None, timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        seen = serving_version(url)
        if seen is not None and (version is None or seen == version):
            return seen
        time.sleep(0.1)
    raise AssertionError(f"{url} serves {seen!r}, expected {version or 'any version'}")


def build_host(directory: Path, *, users: tuple[str, ...] = ("alice", "bob"), current: str = "0.0.42",
               current_migrations: int = 52, rows: int = 5, registry_url: str | None = None,
               make_state: Callable[[Path], object] | None = None,
               current_settings: dict[str, Any] | None = None, through: str = "users",
               rings: list[dict[str, Any]] | None = None, layout: str = "single") -> Host:
    """A host on `current` (installed by t3track adopt-like layout), servers running, a backup taken.

    registry_url: use a registry started elsewhere (verdaccio) instead of a loopback RegistryServer;
    nothing is published to it here (the caller publishes `current` and the nightlies itself).
    make_state: builds a user's base dir instead of emu.make_user_state (e.g. the real server creating
    its own state); `rows` threads of user data are added to it afterwards.
    current_settings: more emulator.json keys for the current build (e.g. a V2 build: database="statev2").
    through: "users" (the shipped t3@.service: each user's server starts through root/users/<user>,
    made here as provisioning does) or "current" (a host from before rings: root/current only).
    rings: the config's `rings` (users start through their ring's link, every ring on `current`).
    layout: "single" (one package `t3` holding the emulator) or "release" (upstream's: the launcher `t3`
    and the platform package @t3code/t3-linux-x64 holding the executable, for nights that reach the
    real 0.0.42; tests/real_t3.py publishes it).
    """
    registry: RegistryServer | ExternalRegistry = (
        ExternalRegistry(registry_url) if registry_url else RegistryServer().start())
    host_users = []
    for name in users:
        base = directory / "home" / name / ".t3"
        if make_state is None:
            emu.make_user_state(base, migrations=current_migrations, rows=rows)
        else:
            make_state(base)
            if rows:
                emu.add_rows(emu.live_db(base), rows, "initial")
        port = free_port()
        while port in {u.port for u in host_users}:  # a port let go is often handed out again at once
            port = free_port()
        host_users.append(HostUser(name, port, base))
    host = Host(directory, registry, host_users, through=through, layout=layout)
    host.write_config(**({"rings": rings} if rings else {}))
    if isinstance(registry, RegistryServer):
        host.publish(current, migrations=current_migrations, tag=None, **(current_settings or {}))
    prefix = host.root / "versions" / current
    if layout == "release":
        emu.make_release_install(prefix, current, migrations=current_migrations, **(current_settings or {}))
    else:
        emu.make_install(prefix, current, migrations=current_migrations, **(current_settings or {}))
    (host.root / "current").symlink_to(Path("versions") / current)
    if through == "users":
        ring_of = {u: r["name"] for r in (rings or []) for u in r["users"]}
        first = rings[0]["name"] if rings else None
        for user in host_users:
            ring = ring_of.get(user.name, first)
            link = Path("../current") if ring in (None, first) else Path("../rings") / ring
            if ring not in (None, first) and not (host.root / "rings" / ring).is_symlink():
                (host.root / "rings").mkdir(exist_ok=True)
                (host.root / "rings" / ring).symlink_to(Path("../versions") / current)
            (host.root / "users").mkdir(exist_ok=True)
            (host.root / "users" / user.name).symlink_to(link)
    host.state_dir.mkdir(mode=0o700, parents=True)
    (host.state_dir / "state.json").write_text(json.dumps({"current": current}))
    host.start_servers()
    return host
