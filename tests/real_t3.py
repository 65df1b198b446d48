"""The real T3 Code server for tests: installed once from the npm registry into a cache, reused.

`@t3code/t3-linux-x64@0.0.42` is the one real release the registry has (64 MB tarball, ~6 s). It is
installed with the real `npm install --prefix DIR --ignore-scripts --no-save` into
`$T3TRACK_TEST_CACHE` or `<repo>/.cache/t3-real/`, under a lock, renamed into place only when complete.
Tests that use it are marked `@pytest.mark.real_server`.

Also here: starting a real server on a base dir for a test, and the /proc scan that proves no process
outlived a test.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import re
import shutil
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.emulator import package as emu

from t3track import runner
from t3track.host import probe
from t3track.host.sandbox import free_port
from t3track.host.serving import server_version

PACKAGE = "@t3code/t3-linux-x64"
VERSION = "0.0.42"
REPACKED_NAME = f"t3-{VERSION}-repacked.tgz"
# what a leaked pairing token, credential or session cookie looks like in any text t3track wrote
SECRET_SHAPES = [
    re.compile(r"(?i)\btoken\s*[:=]\s*(?!\[REDACTED\])[A-Z0-9]{12}\b"),
    re.compile(r'(?i)"credential"\s*:\s*"(?!\[REDACTED\])[^"]+"'),
    re.compile(r"t3_session[A-Za-z0-9_]*=(?!\[REDACTED\])[^;\s\"']+"),
]
REPO = Path(__file__).resolve().parents[1]
INSTALL_TIMEOUT_S = 600
READY_TIMEOUT_S = 30


def cache_dir() -> Path:
    configured = os.environ.get("T3TRACK_TEST_CACHE")
    return Path(configured) / "t3-real" if configured else REPO / ".cache" / "t3-real"


def executable_in(prefix: Path) -> Path:
    return prefix / "node_modules" / "@t3code" / "t3-linux-x64" / "t3"


def install_real_t3() -> Path:
    """The real 0.0.42 executable, installed on first use (concurrent test processes wait on a lock)."""
    cache = cache_dir()
    prefix = cache / VERSION
    if os.access(executable_in(prefix), os.X_OK):
        return executable_in(prefix)
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.access(executable_in(prefix), os.X_OK):
            return executable_in(prefix)
        partial = cache / f".{VERSION}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        done = runner.run(["npm", "install", "--prefix", partial, "--ignore-scripts", "--no-save",
                           "--no-audit", "--no-fund", f"{PACKAGE}@{VERSION}"], timeout=INSTALL_TIMEOUT_S)
        if not done.ok or not os.access(executable_in(partial), os.X_OK):
            shutil.rmtree(partial, ignore_errors=True)
            pytest.fail(f"could not install {PACKAGE}@{VERSION} from the registry: {done.describe()}")
        shutil.rmtree(prefix, ignore_errors=True)
        partial.rename(prefix)
    return executable_in(prefix)


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


# ---------------------------------------------------------------- the real package, re-packed as t3


def repacked_real_t3(executable: Path) -> Path:
    """`t3@0.0.42` as an npm tarball holding the real package directory under package/bin/.

    Built once (gzip level 1: the binary is ~160 MB and does not compress much anyway) and cached next
    to the real install; concurrent test processes wait on a lock; renamed into place when complete."""
    cache = cache_dir()
    target = cache / REPACKED_NAME
    if target.is_file():
        return target
    with open(cache / ".repack.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file():
            return target
        package_dir = executable.parent
        partial = target.with_name(f".{target.name}.partial")
        manifest = {"name": "t3", "version": VERSION, "bin": {"t3": "bin/t3"}, "license": "MIT",
                    "description": f"the real {PACKAGE}@{VERSION}, re-packed for t3track's tests"}
        data = json.dumps(manifest, indent=2).encode() + b"\n"

        def normalised(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
            if info.issym() or "/.bin" in info.name:  # npm would make its own bin links
                return None
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = emu.NPM_MTIME
            return info

        with tarfile.open(partial, "w:gz", compresslevel=1) as archive:
            info = tarfile.TarInfo("package/package.json")
            info.size, info.mode, info.mtime = len(data), 0o644, emu.NPM_MTIME
            archive.addfile(info, io.BytesIO(data))
            for entry in sorted(package_dir.iterdir()):
                if entry.name in ("package.json", "README.md"):
                    continue
                archive.add(entry, arcname=f"package/bin/{entry.name}", filter=normalised)
        partial.rename(target)
    return target
