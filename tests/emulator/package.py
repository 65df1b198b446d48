"""Helpers for tests and demos around the T3 Code emulator (t3emu.py). Standard library only.

Builds installs and npm tarballs of the emulator, realistic user base dirs, and starts/stops servers
(the emulator or the real executable: same argv) by process group. See README.md beside this file.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import os
import re
import signal
import subprocess
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from . import t3emu

EMULATOR = Path(__file__).resolve().with_name("t3emu.py")
EXECUTABLE = "node_modules/t3/bin/t3"  # the config's `executable` for emulator installs
PACKAGE = "t3"
ROWS_TABLE = "projection_threads"      # where make_user_state/add_rows put user data
NPM_MTIME = 499162500                  # npm pack's fixed mtime (1985-10-26)


def settings(version: str, *, era: str = "B", migrations: int | None = None, fault: str | None = None,
             start_delay_s: float = 0, **extra) -> dict:
    """The emulator.json document. `migrations` defaults to 52 for Era B and 30 for Era A."""
    if migrations is None:
        migrations = 52 if era == "B" else 30
    return {"version": version, "era": era, "migrations": migrations, "fault": fault,
            "start_delay_s": start_delay_s, **extra}


# ---------------------------------------------------------------- installs and tarballs


def emulator_bytes() -> bytes:
    """t3emu.py as installed: with a shebang naming /usr/bin/python3 when there is one (every user, and
    the real-systemd container, can run it). `#!/usr/bin/env python3` goes through the first `python3`
    on PATH, which on a pyenv machine is a shell shim of ~25 processes per start: 10,233 execve calls
    in one 10-user night (strace), most of the night's CPU on two cores."""
    data = EMULATOR.read_bytes()
    if Path("/usr/bin/python3").is_file():
        data = data.replace(b"#!/usr/bin/env python3\n", b"#!/usr/bin/python3\n", 1)
    return data



def make_install(prefix: Path, version: str, era: str = "B", migrations: int | None = None,
                 fault: str | None = None, start_delay_s: float = 0, **extra) -> Path:
    """Lay out an emulator install as `npm install --prefix PREFIX t3@VERSION` would; return the executable.

    prefix/node_modules/t3/{package.json, bin/t3, bin/emulator.json}, prefix/node_modules/.bin/t3 -> ../t3/bin/t3,
    prefix/package.json. The executable is prefix/EXECUTABLE.
    """
    prefix = Path(prefix)
    package_dir = prefix / "node_modules" / PACKAGE
    (package_dir / "bin").mkdir(parents=True, exist_ok=True)
    (package_dir / "package.json").write_text(json.dumps(_manifest(version), indent=2) + "\n")
    executable = package_dir / "bin" / "t3"
    executable.write_bytes(emulator_bytes())
    executable.chmod(0o755)
    write_settings(executable, settings(version, era=era, migrations=migrations, fault=fault,
                                        start_delay_s=start_delay_s, **extra))
    dot_bin = prefix / "node_modules" / ".bin"
    dot_bin.mkdir(exist_ok=True)
    link = dot_bin / "t3"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(Path("..") / PACKAGE / "bin" / "t3")
    (prefix / "package.json").write_text(json.dumps({"dependencies": {PACKAGE: version}}, indent=2) + "\n")
    return executable


def settings_path(executable: Path) -> Path:
    return Path(os.path.realpath(executable)).parent / "emulator.json"


def write_settings(executable: Path, document: dict) -> None:
    settings_path(executable).write_text(json.dumps(document, indent=2) + "\n")


def configure(executable: Path, **changes) -> dict:
    """Change an installed emulator's behaviour, e.g. configure(exe, fault="no-cookie"). Returns the new settings."""
    path = settings_path(executable)
    document = json.loads(path.read_text())
    document.update(changes)
    path.write_text(json.dumps(document, indent=2) + "\n")
    return document


def _manifest(version: str) -> dict:
    return {"name": PACKAGE, "version": version, "bin": {"t3": "bin/t3"}, "license": "MIT"}


# Like the real platform package, every build carries native modules as bundleDependencies: npm takes
# them out of the build's own tarball (the lock says `"inBundle": true`, with no integrity), never from
# the registry, which in the tests does not have them. One is scoped, and one bundles a dependency of
# its own (nested, like the real ffi-rs); the emulator refuses to start when one does not resolve.
BUNDLED = {"@t3emu/native-linux-x64-gnu": "0.9.4", "emu-pty": "1.1.0"}
_NESTED = ("emu-pty", "emu-addon-api", "7.1.1")  # (bundled package, its own dependency, version)


def _bundled_entries() -> list[tuple[str, bytes, int]]:
    """package/node_modules/... as `npm pack` writes a package's bundled dependencies."""
    parent, child, child_version = _NESTED
    entries = []
    for name, version in BUNDLED.items():
        manifest: dict = {"name": name, "version": version, "license": "MIT"}
        if name == parent:
            manifest["dependencies"] = {child: child_version}
        entries += [(f"node_modules/{name}/package.json", json.dumps(manifest, indent=2).encode() + b"\n", 0o644),
                    (f"node_modules/{name}/build/Release/native.node", f"\x7fELF {name}@{version}".encode(), 0o755)]
    entries.append((f"node_modules/{parent}/node_modules/{child}/package.json",
                    json.dumps({"name": child, "version": child_version, "license": "MIT"}).encode(), 0o644))
    return entries


def _with_bundle(manifest: dict) -> dict:
    return {**manifest, "dependencies": dict(BUNDLED), "bundleDependencies": sorted(BUNDLED)}


def _tarball(entries: list[tuple[str, bytes, int]]) -> bytes:
    """An npm tarball of `entries` (path under package/, bytes, mode), npm pack's fixed mtime, gzip."""
    import gzip

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data, mode in entries:
            info = tarfile.TarInfo(f"package/{name}")
            info.size, info.mode, info.mtime = len(data), mode, NPM_MTIME
            archive.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def tarball_bytes(version: str, era: str = "B", migrations: int | None = None, fault: str | None = None,
                  start_delay_s: float = 0, **extra) -> bytes:
    """An npm tarball of the emulator: package/{package.json, bin/t3 (0755), bin/emulator.json} and its
    bundled native modules (package/node_modules/, see BUNDLED), which the emulator needs to start."""
    return _tarball([
        ("package.json", json.dumps(_with_bundle(_manifest(version)), indent=2).encode() + b"\n", 0o644),
        ("bin/t3", emulator_bytes(), 0o755),
        ("bin/emulator.json", json.dumps(settings(version, era=era, migrations=migrations, fault=fault,
                                                  start_delay_s=start_delay_s, native_modules=sorted(BUNDLED),
                                                  **extra)).encode(), 0o644),
        *_bundled_entries(),
    ])


# ---------------------------------------------------------------- the real package layout
# Since ~2026-09 `t3` is a small Node launcher whose optional dependency `@t3code/t3-linux-x64` (same
# version) holds the executable `t3` at its package root: what systemd/config.example.yaml's
# `executable` and t3@.service's ExecStart= name. release_tarballs() builds both packages around
# the emulator, so a real `npm install t3@V` lays the tree out exactly as for a real release.

PLATFORM_PACKAGE = "@t3code/t3-linux-x64"
RELEASE_EXECUTABLE = f"node_modules/{PLATFORM_PACKAGE}/t3"   # the shipped config's `executable`
_LAUNCHER = """#!/usr/bin/env node
// t3 launcher (emulated): run the platform package's executable with our arguments.
const { spawnSync } = require("child_process");
const path = require("path");
const exe = path.join(path.dirname(require.resolve("%s/package.json")), "t3");
const done = spawnSync(exe, process.argv.slice(2), { stdio: "inherit" });
process.exit(done.status === null ? 1 : done.status);
""" % PLATFORM_PACKAGE


def launcher_tarball_bytes(version: str) -> bytes:
    """`t3@version`: bin/t3.js (a Node launcher), optionalDependencies {PLATFORM_PACKAGE: version}."""
    manifest = {"name": PACKAGE, "version": version, "bin": {"t3": "bin/t3.js"}, "license": "MIT",
                "optionalDependencies": {PLATFORM_PACKAGE: version}}
    return _tarball([("package.json", json.dumps(manifest, indent=2).encode() + b"\n", 0o644),
                     ("bin/t3.js", _LAUNCHER.encode(), 0o755)])


def platform_tarball_bytes(version: str, era: str = "B", migrations: int | None = None, fault: str | None = None,
                           start_delay_s: float = 0, **extra) -> bytes:
    """`@t3code/t3-linux-x64@version`: the emulator as `t3` at the package root (no `bin` entry),
    emulator.json beside it, native modules bundled; os/cpu like the real one."""
    manifest = {"name": PLATFORM_PACKAGE, "version": version, "license": "MIT", "os": ["linux"], "cpu": ["x64"]}
    return _tarball([
        ("package.json", json.dumps(_with_bundle(manifest), indent=2).encode() + b"\n", 0o644),
        ("t3", emulator_bytes(), 0o755),
        ("emulator.json", json.dumps(settings(version, era=era, migrations=migrations, fault=fault,
                                              start_delay_s=start_delay_s, native_modules=sorted(BUNDLED),
                                              **extra)).encode(), 0o644),
        *_bundled_entries(),
    ])


def make_release_install(prefix: Path, version: str, **build) -> Path:
    """Lay out a release as `npm install --prefix PREFIX t3@VERSION` does from release_tarballs(): the
    launcher in node_modules/t3, the platform package with its bundled modules beside it; return the
    executable (prefix/RELEASE_EXECUTABLE)."""
    prefix = Path(prefix)
    for name, data in release_tarballs(version, **build).items():
        target = prefix / "node_modules" / name
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            for member in archive.getmembers():
                member.name = member.name.removeprefix("package/")
            archive.extractall(target, filter="data")
    dot_bin = prefix / "node_modules" / ".bin"
    dot_bin.mkdir(exist_ok=True)
    if not (dot_bin / "t3").is_symlink():
        (dot_bin / "t3").symlink_to(Path("..") / PACKAGE / "bin" / "t3.js")
    (prefix / "package.json").write_text(json.dumps({"dependencies": {PACKAGE: version}}, indent=2) + "\n")
    return prefix / RELEASE_EXECUTABLE


def release_tarballs(version: str, **build) -> dict[str, bytes]:
    """Both packages of a release in the real layout: {package name: tarball}. Publish the platform
    package as well (without a dist-tag): npm resolves it by version."""
    return {PACKAGE: launcher_tarball_bytes(version), PLATFORM_PACKAGE: platform_tarball_bytes(version, **build)}


def pack_release(dest_dir: Path, version: str, **build) -> list[Path]:
    """Write both tarballs of a release into dest_dir (`t3-V.tgz`, `t3code-t3-linux-x64-V.tgz`, like npm pack)."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in release_tarballs(version, **build).items():
        path = dest_dir / f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"
        path.write_bytes(data)
        paths.append(path)
    return paths


def pack_tarball(dest_dir: Path, version: str, era: str = "B", migrations: int | None = None,
                 fault: str | None = None, start_delay_s: float = 0, **extra) -> Path:
    """Write `t3-<version>.tgz` into dest_dir (like `npm pack`) and return its path; see tarball_integrity()."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    path = dest_dir / f"{PACKAGE}-{version}.tgz"
    path.write_bytes(tarball_bytes(version, era, migrations, fault, start_delay_s, **extra))
    return path


def tarball_integrity(path: Path) -> str:
    """npm's `dist.integrity`: sha512-<base64 digest>."""
    return "sha512-" + base64.b64encode(hashlib.sha512(Path(path).read_bytes()).digest()).decode()


def tarball_shasum(path: Path) -> str:
    """npm's `dist.shasum`: hex sha1."""
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------- user state


@dataclass(frozen=True)
class UserState:
    base_dir: Path
    db: Path
    thread_ids: list[str]


def state_db(base_dir: Path) -> Path:
    return Path(base_dir) / "userdata" / "state.sqlite"


def live_db(base_dir: Path) -> Path:
    """The database a server on base_dir uses: statev2.sqlite once a V2 build created it."""
    v2 = Path(base_dir) / "userdata" / t3emu.V2_DB
    return v2 if v2.exists() else state_db(base_dir)


def make_user_state(base_dir: Path, migrations: int = 52, rows: int = 5, database: str = "state") -> UserState:
    """A user's T3 base dir as a server at `migrations` leaves it, with `rows` threads of user data.

    userdata/state.sqlite (WAL, effect_sql_migrations 1..migrations, one project, `rows` rows in
    projection_threads), secrets/*.bin (0600 in a 0700 dir), environment-id, settings.json,
    keybindings.json. No server-runtime.json (no server is running).
    """
    paths = t3emu.Paths(str(base_dir), {"database": database})  # "statev2": a host first installed on a V2 build
    t3emu.ensure_userdata(paths)
    with t3emu.connected(paths.db) as conn:
        t3emu.migrate(conn, migrations)
    (paths.userdata / "settings.json").write_text(json.dumps({"theme": "system", "enableAssistantStreaming": True}, indent=2) + "\n")
    (paths.userdata / "keybindings.json").write_text(json.dumps([{"key": "mod+b", "command": "sidebar.toggle"}], indent=2) + "\n")
    ids = add_rows(paths.db, rows, "initial")
    return UserState(paths.base, paths.db, ids)


def add_rows(db: Path, count: int, tag: str) -> list[str]:
    """Insert `count` threads titled `<tag> thread <i>` into ROWS_TABLE (works while a server runs)."""
    stamp = t3emu.iso(t3emu.now())
    ids = [f"thread-{tag}-{uuid.uuid4().hex[:8]}-{i:04d}" for i in range(count)]
    with t3emu.connected(Path(db)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT OR IGNORE INTO projection_projects (project_id, title, workspace_root, scripts_json,"
                     " created_at, updated_at) VALUES ('project-1', 'demo', '/srv/demo', '[]', ?, ?)", (stamp, stamp))
        conn.executemany(f"INSERT INTO {ROWS_TABLE} (thread_id, project_id, title, created_at, updated_at)"
                         " VALUES (?, 'project-1', ?, ?, ?)",
                         [(tid, f"{tag} thread {i}", stamp, stamp) for i, tid in enumerate(ids)])
        conn.execute("COMMIT")
    return ids


@dataclass(frozen=True)
class AgentTurn:
    db: Path
    thread_id: str
    turn_id: str
    tables: str  # "v1" | "v2"


def start_turn(db: Path, seconds: float, *, v2: bool = False) -> AgentTurn:
    """An agent turn running for `seconds` in a thread of its own, as the projections show one (V1: a
    session `running` with the active turn, the turn `running`; V2: a run `running`). A server built with
    `agent_turns` finishes it when the time is up, or marks it interrupted when it is stopped first
    (written here while the server runs, like add_rows)."""
    stamp = t3emu.iso(t3emu.now())
    thread_id, turn_id = f"thread-agent-{uuid.uuid4().hex[:8]}", f"turn-{uuid.uuid4().hex[:8]}"
    with t3emu.connected(Path(db)) as conn:
        conn.execute(t3emu.AGENT_TURNS_TABLE)
        for statement in t3emu.V2_AGENT_TABLES if v2 else []:
            conn.execute(statement)
        conn.execute("BEGIN IMMEDIATE")
        if v2:
            conn.execute("INSERT INTO orchestration_v2_projection_threads (thread_id, title, created_at) VALUES (?, ?, ?)",
                         (thread_id, "agent at work", stamp))
            conn.execute("INSERT INTO orchestration_v2_projection_runs (run_id, thread_id, status, updated_at) "
                         "VALUES (?, ?, 'running', ?)", (turn_id, thread_id, stamp))
        else:
            conn.execute("INSERT OR IGNORE INTO projection_projects (project_id, title, workspace_root, scripts_json,"
                         " created_at, updated_at) VALUES ('project-1', 'demo', '/srv/demo', '[]', ?, ?)", (stamp, stamp))
            conn.execute(f"INSERT INTO {ROWS_TABLE} (thread_id, project_id, title, latest_turn_id, created_at, updated_at)"
                         " VALUES (?, 'project-1', 'agent at work', ?, ?, ?)", (thread_id, turn_id, stamp, stamp))
            conn.execute("INSERT INTO projection_thread_sessions (thread_id, status, provider_name, active_turn_id, "
                         "updated_at) VALUES (?, 'running', 'codex', ?, ?)", (thread_id, turn_id, stamp))
            conn.execute("INSERT INTO projection_turns (thread_id, turn_id, state, requested_at, started_at, "
                         "checkpoint_files_json) VALUES (?, ?, 'running', ?, ?, '[]')", (thread_id, turn_id, stamp, stamp))
        conn.execute("INSERT INTO t3emu_agent_turns (thread_id, turn_id, tables, finishes_at, state) "
                     "VALUES (?, ?, ?, ?, 'running')", (thread_id, turn_id, "v2" if v2 else "v1", time.time() + seconds))
        conn.execute("COMMIT")
    return AgentTurn(Path(db), thread_id, turn_id, "v2" if v2 else "v1")


def turn_state(turn: AgentTurn) -> str:
    """What the projections say of the turn now: running, completed or interrupted."""
    with t3emu.connected(turn.db) as conn:
        if turn.tables == "v2":
            row = conn.execute("SELECT status FROM orchestration_v2_projection_runs WHERE run_id = ?",
                               (turn.turn_id,)).fetchone()
        else:
            row = conn.execute("SELECT state FROM projection_turns WHERE thread_id = ? AND turn_id = ?",
                               (turn.thread_id, turn.turn_id)).fetchone()
    return row[0]


AGENT_VECTORS = ("boot_providers", "continuation", "auto_pull", "scheduled_tasks", "effect_outbox", "cloud_connect")
EVERYTHING_ON = {  # a user's settings.json that turns on every way a server acts on the world at boot
    "continueThreadsAfterServerUpdate": True, "autoResumeLimitedThreads": True, "defaultAutoPull": True,
    "enableProviderUpdateChecks": True,
    "providers": {"codex": {"enabled": True}, "claudeAgent": {"enabled": True}},
    "providerInstances": {"work-codex": {"provider": "codex", "enabled": True}},
    "projectSettingsOverrides": {"project-agents": {"continueThreadsAfterServerUpdate": True, "autoPull": True}},
    "projectAutoPullOverrides": {"project-agents": True},
}


def add_agent_work(base_dir: Path, workspace: Path) -> None:
    """A user whose agent was working in `workspace` when the server stopped: a project there with
    auto-pull on, a thread whose turn runs with a resume cursor and a continuation marker, an enabled
    scheduled task and effects queued and running (the V2 tables, made here), and settings with
    everything on (t3emu's `act_at_boot` acts on each)."""
    base = Path(base_dir)
    stamp = t3emu.iso(t3emu.now())
    with t3emu.connected(live_db(base)) as conn:
        conn.executescript(f"""
            BEGIN IMMEDIATE;
            INSERT INTO projection_projects (project_id, title, workspace_root, scripts_json, created_at, updated_at,
                                             auto_pull)
                VALUES ('project-agents', 'app', '{workspace}', '[]', '{stamp}', '{stamp}', 1);
            INSERT INTO projection_threads (thread_id, project_id, title, latest_turn_id, created_at, updated_at)
                VALUES ('thread-agent', 'project-agents', 'refactor', 'turn-1', '{stamp}', '{stamp}');
            INSERT INTO projection_thread_sessions (thread_id, status, provider_name, active_turn_id, updated_at)
                VALUES ('thread-agent', 'running', 'codex', 'turn-1', '{stamp}');
            INSERT INTO provider_session_runtime (thread_id, provider_name, adapter_key, status, last_seen_at,
                                                  resume_cursor_json, runtime_payload_json)
                VALUES ('thread-agent', 'codex', 'codex', 'running', '{stamp}', '{{"threadId": "c-1"}}',
                        '{{"continueAfterServerUpdate": true}}');
            CREATE TABLE IF NOT EXISTS scheduled_tasks (task_id TEXT PRIMARY KEY, project_id TEXT, enabled INTEGER);
            INSERT INTO scheduled_tasks VALUES ('nightly-review', 'project-agents', 1);
            CREATE TABLE IF NOT EXISTS orchestration_v2_effect_outbox (effect_id TEXT PRIMARY KEY, kind TEXT,
                                                                       workspace_root TEXT, status TEXT);
            INSERT INTO orchestration_v2_effect_outbox VALUES
                ('effect-1', 'provider-turn.start', '{workspace}', 'pending'),
                ('effect-2', 'checkpoint.revert', '{workspace}', 'running');
            COMMIT;
        """)
    (base / "userdata" / "settings.json").write_text(json.dumps(EVERYTHING_ON, indent=2) + "\n")


def add_cloud_secrets(base_dir: Path, relays: list[str]) -> None:
    """T3 Connect secrets (the emulator's shape of the endpoint config: the relays it links to)."""
    secrets = Path(base_dir) / "userdata" / "secrets"
    for name, data in ((t3emu.CLOUD_CONFIG, json.dumps({"relays": relays}).encode()),
                       ("cloud-cli-oauth-token.bin", b"oauth-token-of-the-user"),
                       ("cloud-link-ed25519-key-pair.bin", t3emu.ed25519_key_pair_json())):
        path = secrets / name
        path.write_bytes(data)
        path.chmod(0o600)


def migration_ids(db: Path) -> list[int]:
    with t3emu.connected(Path(db)) as conn:
        return [row[0] for row in conn.execute("SELECT migration_id FROM effect_sql_migrations ORDER BY 1")]


# ---------------------------------------------------------------- HTTP (loopback only)


@dataclass(frozen=True)
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def json(self):
        return json.loads(self.body)

    @property
    def set_cookies(self) -> list[str]:
        return [v for k, v in self.headers if k.lower() == "set-cookie"]


def request(url: str, method: str = "GET", path: str = "/", *, json_body=None, body: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 5.0) -> Response:
    """One HTTP request to a loopback server (no redirects followed, every header kept)."""
    match = re.fullmatch(r"http://(127\.\d+\.\d+\.\d+|localhost|\[::1\]):(\d+)/?", url)
    if not match:
        raise ValueError(f"only loopback http URLs are allowed, not {url!r}")
    headers = dict(headers or {})
    if json_body is not None:
        body = json.dumps(json_body).encode()
        headers.setdefault("Content-Type", "application/json")
    conn = http.client.HTTPConnection(match.group(1).strip("[]"), int(match.group(2)), timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers)
        answer = conn.getresponse()
        return Response(answer.status, answer.getheaders(), answer.read())
    finally:
        conn.close()


@dataclass(frozen=True)
class Pairing:
    """The outcome of one credential exchange, as a client sees it."""
    response: Response
    cookie_name: str | None
    cookie_value: str | None
    cookie_attributes: list[str]

    @property
    def cookie_header(self) -> str | None:
        return f"{self.cookie_name}={self.cookie_value}" if self.cookie_name else None


def exchange(url: str, credential: str, path: str = "/api/auth/browser-session", timeout: float = 5.0) -> Pairing:
    """POST the credential to `path`; parse the first Set-Cookie (name, value, attributes)."""
    answer = request(url, "POST", path, json_body={"credential": credential}, timeout=timeout)
    cookies = answer.set_cookies
    if not cookies:
        return Pairing(answer, None, None, [])
    first, *attributes = [part.strip() for part in cookies[0].split(";")]
    name, _, value = first.partition("=")
    return Pairing(answer, name, value, attributes)


def pair(url: str, credential: str, timeout: float = 5.0) -> Pairing:
    """The client fallback of 2026-06-16: browser-session, then bootstrap on 404."""
    result = exchange(url, credential, "/api/auth/browser-session", timeout)
    if result.response.status == 404:
        result = exchange(url, credential, "/api/auth/bootstrap", timeout)
    return result


# ---------------------------------------------------------------- processes


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, "T3CODE_TELEMETRY_ENABLED": "false", **(extra or {})}


def mint(executable: Path, base_dir: Path, ttl: str = "5m", env: dict[str, str] | None = None,
         timeout: float = 30) -> subprocess.CompletedProcess:
    """Run `t3 auth pairing create --base-dir D --ttl TTL --json` (stdout holds a credential: a secret)."""
    return subprocess.run([str(executable), "auth", "pairing", "create", "--base-dir", str(base_dir), "--ttl", ttl,
                           "--json"], capture_output=True, text=True, env=server_env(env), timeout=timeout,
                          stdin=subprocess.DEVNULL)


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return False


def group_alive(pgid: int) -> bool:
    for entry in os.listdir("/proc"):
        if entry.isdigit() and pid_alive(int(entry)):
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    if int(handle.read().rsplit(")", 1)[1].split()[2]) == pgid:
                        return True
            except (FileNotFoundError, IndexError, ValueError):
                continue
    return False


@dataclass
class ServerHandle:
    """A `t3 serve` started by start_server, in its own session/process group (pgid == pid)."""
    proc: subprocess.Popen
    port: int
    base_dir: Path
    log_path: Path
    argv: list[str] = field(default_factory=list)
    owns_log: bool = False          # a temp log start_server made: deleted by stop(), its text kept in memory
    _final_output: str | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        if self._final_output is not None:
            return self._final_output
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def token(self) -> str | None:
        """The startup `Token:` (a one-time credential: a secret)."""
        match = re.search(r"^Token: (\S+)$", self.output(), re.M)
        return match.group(1) if match else None

    def wait_ready(self, timeout: float = 15.0, version: str | None = None) -> dict:
        """Poll /.well-known/t3/environment (1 s per request: the real one can hang an early request)."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"t3 serve exited {self.proc.returncode} before ready:\n{self.output()[-2000:]}")
            try:
                answer = request(self.url, "GET", "/.well-known/t3/environment", timeout=1.0)
                last = f"HTTP {answer.status}"
                if answer.status == 200:
                    document = answer.json()
                    if version is None or document.get("serverVersion") == version:
                        self.wait_output("T3 Code server is ready.", max(0.0, deadline - time.monotonic()))
                        return document
                    last = f"serverVersion {document.get('serverVersion')!r}"
            except (OSError, http.client.HTTPException) as error:
                last = type(error).__name__
            time.sleep(0.05)
        raise TimeoutError(f"t3 serve on port {self.port} not ready after {timeout}s ({last})")

    def wait_output(self, text: str, timeout: float = 15.0) -> str:
        """Wait until the server's output contains `text`; return the output."""
        deadline = time.monotonic() + timeout
        while True:
            output = self.output()
            if text in output:
                return output
            if time.monotonic() >= deadline or self.proc.poll() is not None:
                raise TimeoutError(f"t3 serve on port {self.port} never printed {text!r}")
            time.sleep(0.05)

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM the process group, wait, SIGKILL what is left. Returns the exit code."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                continue
            if not group_alive(self.proc.pid):
                break
        if self.owns_log and self._final_output is None:  # it holds the startup token: don't leave it in /tmp
            self._final_output = self.output()
            self.log_path.unlink(missing_ok=True)
        return self.proc.returncode

    def alive(self) -> bool:
        return pid_alive(self.proc.pid) or group_alive(self.proc.pid)


def start_server(executable: Path, base_dir: Path, port: int | None = None, *, env: dict[str, str] | None = None,
                 wait: bool = True, timeout: float = 15.0, log_path: Path | None = None) -> ServerHandle:
    """Start `EXECUTABLE serve --host 127.0.0.1 --port P --base-dir D --no-browser`; wait until ready unless wait=False.

    stdout and stderr go to log_path (default: a private temp file that stop() deletes, keeping its text for
    output()). Always stop() the handle (a finalizer).
    """
    port = port or free_port()
    owns_log = log_path is None
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix=f"t3-serve-{port}-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    argv = [str(executable), "serve", "--host", "127.0.0.1", "--port", str(port), "--base-dir", str(base_dir),
            "--no-browser"]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                env=server_env(env), start_new_session=True)
    handle = ServerHandle(proc, port, Path(base_dir), Path(log_path), argv, owns_log)
    if wait:
        try:
            handle.wait_ready(timeout)
        except BaseException:
            handle.stop()
            raise
    return handle


def stop_server(handle: ServerHandle) -> int | None:
    return handle.stop()
