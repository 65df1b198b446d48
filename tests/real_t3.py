"""The real T3 Code server for tests, in the layout npm ships it, installed through t3track's own path.

`@t3code/t3-linux-x64@0.0.42` is the one real release the registry has (64 MB tarball). Its tarball is
fetched once, exactly as the registry serves it (`npm pack`, checked against the registry's
dist.integrity), into `$T3TRACK_TEST_CACHE` or `<repo>/.cache/t3-real/`. `publish_real()` serves it
from a loopback registry as upstream publishes a release: the launcher `t3@0.0.42` (built here, since
the registry's `t3` is an unrelated package: tests/emulator/package.py's launcher, whose optional
dependency names the platform package) beside the real platform tarball, whose native modules
(@ff-labs/fff-*, node-pty, ffi-rs, ...) come bundled inside it and are served by no test registry.
`install_real_t3()` installs that release with t3track's own `ensure_installed` (real `npm install`,
every verification) into the cache, once, under a lock: the executable every real-server test runs
is `<prefix>/node_modules/@t3code/t3-linux-x64/t3` as npm laid it out, never a re-pack.
Tests that use it are marked `@pytest.mark.real_server`.

Also here: starting a real server on a base dir for a test, and the /proc scan that proves no process
outlived a test.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from tests.emulator import package as emu
from tests.support.registry_server import RegistryServer, serve, sri_sha512

from t3track import runner
from t3track.host import probe
from t3track.host.sandbox import free_port
from t3track.host.serving import server_version

PACKAGE = "@t3code/t3-linux-x64"
LAUNCHER = "t3"
VERSION = "0.0.42"
EXECUTABLE = emu.RELEASE_EXECUTABLE  # node_modules/@t3code/t3-linux-x64/t3, the shipped config's
# what a leaked pairing token, credential or session cookie looks like in any text t3track wrote
SECRET_SHAPES = [
    re.compile(r"(?i)\btoken\s*[:=]\s*(?!\[REDACTED\])[A-Z0-9]{12}\b"),
    re.compile(r'(?i)"credential"\s*:\s*"(?!\[REDACTED\])[^"]+"'),
    re.compile(r"t3_session[A-Za-z0-9_]*=(?!\[REDACTED\])[^;\s\"']+"),
]
REPO = Path(__file__).resolve().parents[1]
INSTALL_TIMEOUT_S = 600
READY_TIMEOUT_S = 30
TARBALL_NAME = f"t3code-t3-linux-x64-{VERSION}.tgz"  # npm pack's name for it


def cache_dir() -> Path:
    configured = os.environ.get("T3TRACK_TEST_CACHE")
    return Path(configured) / "t3-real" if configured else REPO / ".cache" / "t3-real"


def installed_prefix() -> Path:
    """Where install_real_t3() puts the release: a t3track root's versions/<v>, as on a host."""
    return cache_dir() / "root" / "versions" / VERSION


def executable_in(prefix: Path) -> Path:
    return prefix / EXECUTABLE


def _locked(name: str):  # noqa: ANN202
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    lock = open(cache / name, "w")  # noqa: SIM115 (closed by the caller's with)
    fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


def platform_tarball() -> Path:
    """The real platform package's tarball, byte for byte as the registry serves it (cached)."""
    target = cache_dir() / TARBALL_NAME
    if target.is_file():
        return target
    with _locked(".tarball.lock"):
        if target.is_file():
            return target
        partial = cache_dir() / ".tarball.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        spec = f"{PACKAGE}@{VERSION}"
        packed = runner.run(["npm", "pack", spec, "--pack-destination", partial, "--no-audit", "--no-fund"],
                            timeout=INSTALL_TIMEOUT_S, cwd=partial)
        published = runner.run(["npm", "view", spec, "dist.integrity"], timeout=120, cwd=partial)
        tarball = partial / TARBALL_NAME
        if not (packed.ok and published.ok and tarball.is_file()):
            shutil.rmtree(partial, ignore_errors=True)
            pytest.fail(f"could not fetch {spec} from the registry: {packed.describe()} {published.describe()}")
        actual = sri_sha512(tarball.read_bytes())
        if actual != published.stdout.strip():
            shutil.rmtree(partial, ignore_errors=True)
            pytest.fail(f"{spec}: the tarball npm fetched is not what the registry publishes ({actual[:23]}…)")
        tarball.rename(target)
        shutil.rmtree(partial, ignore_errors=True)
    return target


def publish_real(registry: RegistryServer, *, tag: str | None = None, published_at: datetime | None = None) -> None:
    """The real release on a loopback registry as upstream publishes it: the real platform tarball
    unchanged, and the launcher `t3@0.0.42` whose optional dependency names it."""
    registry.publish(PACKAGE, VERSION, platform_tarball().read_bytes())
    registry.publish(LAUNCHER, VERSION, emu.launcher_tarball_bytes(VERSION), tag=tag, published_at=published_at)


def install_real_t3() -> Path:
    """The real 0.0.42 executable, installed on first use through t3track's install path from a loopback
    registry serving the real layout (concurrent test processes wait on a lock)."""
    executable = executable_in(installed_prefix())
    if os.access(executable, os.X_OK):
        return executable
    tarball = platform_tarball()
    with _locked(".install.lock"):
        if os.access(executable, os.X_OK):
            return executable
        from t3track.config import Config
        from t3track.host.install import ensure_installed
        from t3track.host.registry import RegistryClient

        with serve() as registry:
            publish_real(registry)
            assert tarball.is_file()
            config = Config(package=LAUNCHER, registry=registry.url, root=cache_dir() / "root",
                            state_dir=cache_dir() / "state", executable=EXECUTABLE, install_timeout="10m")
            client = RegistryClient(registry.url, cache_dir() / "state" / "registry-cache")
            info = client.packument(LAUNCHER).versions[VERSION]
            ensure_installed(config, VERSION, info, registry_url=registry.url, client=client)
            fetched = {r.path for r in registry.requests}
            assert not [p for p in fetched if "ff-labs" in p or "node-pty" in p], fetched  # bundled: never asked
    return executable


@pytest.fixture(scope="session")
def real_t3() -> Path:
    return install_real_t3()


@contextlib.contextmanager
def serving(executable: Path, base_dir: Path, *, port: int | None = None) -> Iterator[str]:
    """A real `t3 serve` on base_dir for the duration of the block; yields its URL."""
    port = port or free_port()
    home = base_dir.parent / f"{base_dir.name}-home"
    home.mkdir(parents=True, exist_ok=True)
    log = base_dir.parent / f"{base_dir.name}-serve.log"
    url = f"http://127.0.0.1:{port}"
    server = runner.start([executable, "serve", "--host", "127.0.0.1", "--port", str(port), "--base-dir", base_dir,
                           "--no-browser"], log_path=log, env=runner.scrubbed_env(home), cwd=home)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while server_version(url, timeout=1.0) is None:
            if not server.alive() or time.monotonic() > deadline:
                pytest.fail(f"the real server did not start:\n{server.log_tail(20)}")
            time.sleep(0.1)
        yield url
    finally:
        server.stop()


def make_real_state(executable: Path, base_dir: Path) -> Path:
    """A base dir whose state the real server created (migrations 1..52, secrets, settings)."""
    with serving(executable, base_dir):
        pass
    return base_dir


def processes_mentioning(fragment: str) -> list[int]:
    """PIDs (not zombies) whose command line contains `fragment`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
            continue
        if fragment in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def files_containing(roots: list[Path], secrets: list[str]) -> list[str]:
    """`path: secret-prefix` for every file under roots that holds one of the secrets verbatim."""
    hits = []
    wanted = [s for s in secrets if s]
    for root in roots:
        if not root.exists():
            continue
        for path in [root] if root.is_file() else root.rglob("*"):
            if not path.is_file():
                continue
            data = path.read_bytes()
            hits += [f"{path}: {s[:3]}…" for s in wanted if s.encode() in data]
    return hits


class SecretSpy:
    """Collects every credential, cookie value and startup token the code under test sees, so a test
    can assert that none of them was written anywhere (the code itself never hands them out)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.values: set[str] = set()
        credential_from, set_cookies, stop = probe._credential_from, probe._set_cookies, runner.Background.stop

        def spy_credential(stdout: str) -> str | None:
            value = credential_from(stdout)
            if value:
                self.values.add(value)
            return value

        def spy_cookies(response):  # type: ignore[no-untyped-def]
            pairs = set_cookies(response)
            self.values.update(value for _, value in pairs if value)
            return pairs

        def spy_stop(background: runner.Background) -> None:
            for line in background.log_text().splitlines():
                if line.strip().lower().startswith("token:") and line.split(":", 1)[1].strip():
                    self.values.add(line.split(":", 1)[1].strip())
            stop(background)

        monkeypatch.setattr(probe, "_credential_from", spy_credential)
        monkeypatch.setattr(probe, "_set_cookies", spy_cookies)
        monkeypatch.setattr(runner.Background, "stop", spy_stop)


@pytest.fixture
def secret_spy(monkeypatch: pytest.MonkeyPatch) -> SecretSpy:
    return SecretSpy(monkeypatch)


# ---------------------------------------------------------------- a host with real state and backups


@pytest.fixture(scope="session")
def real_state_template(real_t3: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A base dir the real 0.0.42 server created once per test session (migrations 1..52);
    registered once, in conftest.py, so it is one fixture for the whole session."""
    return make_real_state(real_t3, tmp_path_factory.mktemp("real-state") / "base")


def live_base_dir(template: Path, dest: Path, *, port: int = 38773) -> Path:
    """A copy of `template` standing in for a user's live base dir, with the server-runtime.json a
    running production server leaves there (a sandbox must not carry it)."""
    shutil.copytree(template, dest, symlinks=True)
    runtime = {"pid": 1, "host": "127.0.0.1", "port": port, "origin": f"http://127.0.0.1:{port}"}
    (dest / "userdata" / "server-runtime.json").write_text(json.dumps(runtime))
    return dest


def host_config(tmp_path: Path, users: dict[str, Path], **gates: object):  # noqa: ANN201
    """A Config for a host whose users' live base dirs are `users` (name -> base dir)."""
    from t3track.config import parse_config

    data = {
        "root": str(tmp_path / "root"), "state_dir": str(tmp_path / "state"),
        "backup_dir": str(tmp_path / "backups"),
        "users": [{"name": name, "base_dir": str(base), "port": 38773 + i} for i, (name, base) in enumerate(users.items())],
        "gates": {"serve_timeout": "30s", "probe_timeout": "10s", **gates},
    }
    return parse_config(data)
