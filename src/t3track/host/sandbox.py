"""A candidate serving a throw-away copy of one user's state, on 127.0.0.1, for the gates.

The sandbox base dir is built from the user's newest backup (restored and checksum-verified by
t3track.host.backup) plus `secrets/`, `environment-id`, `settings.json` and `keybindings.json` from the live
base dir, read with the live tree owner's rights (t3track.host.usertree: no link followed, regular
files of a sane size only; anything else is the host's fault, exit 3, never the candidate's). Never
`server-runtime.json` (it points at the production process, and a newer build refuses a state dir
whose runtime file names a live pid) nor `server-owner.sqlite` (the production server's ownership lock):
only the database files and the names in COPIED_FILES/COPIED_DIRS are carried, made inert on the way
(t3track.host.inert: settings, rows and T3 Connect secrets that would act on the world, off). The
candidate runs confined (t3track.host.confine: its own network and PID namespace, read-only outside
the sandbox; the probe reaches it through t3track.host.relay) in its own process group with a scrubbed
environment (HOME inside the sandbox, telemetry off), as the user's `run_as` when configured. Its output is read from a pipe, never from a file in the sandbox (which its user owns).
Whatever happens (ready, crash, timeout, wrong version, Ctrl-C) the group is killed, the redacted log
is written to the evidence dir and the sandbox is deleted.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import sqlite3
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from t3track import runner
from t3track.config import Config, UserConfig
from t3track.errors import EnvironmentFault, ExitCode, T3TrackError
from t3track.fsutil import atomic_write_text, ensure_private_dir
from t3track.host import backup as backup_mod
from t3track.host import confine, inert, probe, restore, serving, usertree
from t3track.host.sqlite import added, database_in_use, database_migrations
from t3track.host.startlog import HostRefusedStart, diverged_marker, host_refusal
from t3track.host.t3db import DATABASES, Migration
from t3track.redact import redact

COPIED_FILES = ("environment-id", "settings.json", "keybindings.json")
COPIED_DIRS = ("secrets",)
# What a later build (unverified) says when it refuses to start on a database whose `id:name` pairs it
# does not know (what V2-era and 0.1.x builds only log: startlog.DIVERGED_MARKERS).
REFUSED_HISTORY = re.compile(r"Unrecognized migration history at \S+")
PORT_ATTEMPTS = 3
LOG_TAIL_LINES = 30
READY_MARKER = "server is ready"  # what T3 prints when it serves (then short polls start over)

_ports_lock = threading.Lock()
_ports_taken: set[int] = set()  # by the sandboxes of this process: gates run side by side


class Cancelled(Exception):
    """The run no longer needs this sandbox (another user's gate failed): it was torn down, nothing
    is held against the candidate. Not a T3TrackError: it never reaches the operator as one."""


class SandboxFailed(T3TrackError):
    """The candidate did not come up on the sandbox: a gate failure, so the old version keeps serving."""

    exit_code = ExitCode.REFUSED

    def __init__(self, message: str, *, reason: str, log_tail: str = "", evidence: str | None = None,
                 hint: str | None = None):
        super().__init__(message, hint=hint)
        self.reason = reason  # setup | exit | timeout | wrong-version
        self.log_tail = log_tail
        self.evidence = evidence


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _take_port(server: SandboxServer, preferred: int | None = None) -> int:
    """A free port no other sandbox of this process holds: two sandboxes started side by side must
    never poll each other's server (both report the candidate's serverVersion). Held until `stop()`."""
    with _ports_lock:
        if preferred is not None and (preferred in server._ports or preferred not in _ports_taken):
            chosen = preferred
        else:
            chosen = free_port()
            for _ in range(100):
                if chosen not in _ports_taken:
                    break
                chosen = free_port()
        _ports_taken.add(chosen)
        server._ports.add(chosen)
        return chosen


def _give_back_ports(server: SandboxServer) -> None:
    with _ports_lock:
        _ports_taken.difference_update(server._ports)
        server._ports.clear()


def _address_in_use(log: str) -> bool:
    lowered = log.lower()
    return "eaddrinuse" in lowered or "address already in use" in lowered or "address in use" in lowered


def _owner(run_as: str | None) -> tuple[int, int] | None:
    if run_as is None or os.geteuid() != 0:
        return None
    return runner.account(run_as)


def _traversable_by(path: Path, uid: int, gid: int) -> bool:
    """Can `uid` reach entries of `path` (x on every ancestor)?"""
    for directory in [path, *path.parents]:
        try:
            st = directory.stat()
        except FileNotFoundError:
            continue
        if st.st_uid == uid:
            ok = st.st_mode & 0o100
        elif st.st_gid == gid:
            ok = st.st_mode & 0o010
        else:
            ok = st.st_mode & 0o001
        if not ok:
            return False
    return True


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def _write_new(dir_fd: int, name: str, data: bytes) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _copy_live_files(user: UserConfig, userdata: Path, notes: list[str]) -> list[str]:
    """The live files the sandbox needs, read as their owner, written by us into our fresh dir, made
    inert on the way (t3track.host.inert): settings.json with everything that acts on the world off
    (written even when the user has none: defaults may be on), no T3 Connect secrets."""
    files, dirs = usertree.read_live_files(user.base_dir, user=user.name, files=COPIED_FILES, dirs=COPIED_DIRS)
    files["settings.json"], note = inert.inert_settings(files.get("settings.json"))
    notes.extend([note] if note else [])
    dropped = sorted(name for name in dirs.get("secrets", {}) if not inert.carried_secret(name))
    for name in dropped:
        del dirs["secrets"][name]
    if dropped:
        notes.append(f"T3 Connect secrets not copied: {', '.join(dropped)}")
    copied = []
    dest = os.open(userdata, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for name, entries in dirs.items():
            os.mkdir(name, 0o700, dir_fd=dest)
            sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dest)
            try:
                for entry, data in entries.items():
                    _write_new(sub, entry, data)
            finally:
                os.close(sub)
            copied.append(name + "/")
        for name, data in files.items():
            _write_new(dest, name, data)
            copied.append(name)
    finally:
        os.close(dest)
    return copied


@dataclass(eq=False)
class SandboxServer:
    """A running candidate on a sandbox copy. `stop()` (or leaving the `with`) removes everything."""

    user: str
    version: str
    root: Path                 # the sandbox dir: base/, home/, raw logs
    base_dir: Path             # what the server got as --base-dir
    home: Path
    evidence_dir: Path
    run_as: str | None = None
    port: int | None = None
    url: str | None = None
    startup_s: float | None = None
    backup_path: Path | None = None
    copied: list[str] = field(default_factory=list)
    migrations_before: list[Migration] = field(default_factory=list)
    migrations_after: list[Migration] = field(default_factory=list)
    database_before: str | None = None   # the file the server uses: state.sqlite, or statev2.sqlite
    database_after: str | None = None
    diverged: list[str] = field(default_factory=list)   # `id:name` pairs the candidate does not know by name
    prior_session: probe.SessionCookie | None = None   # minted with the current version, if asked
    prior_session_detail: str | None = None
    notes: list[str] = field(default_factory=list)
    secrets: set[str] = field(default_factory=set, repr=False)
    confinement: confine.Confinement | None = field(default=None, repr=False)  # how its processes start
    _process: runner.Background | None = field(default=None, repr=False)
    _logs: dict[str, runner.Background] = field(default_factory=dict, repr=False)  # evidence name -> process
    _ports: set[int] = field(default_factory=set, repr=False)
    _stopped: bool = False

    @property
    def env(self) -> dict[str, str]:
        return runner.scrubbed_env(self.home)

    def confine(self, argv: Sequence[str | os.PathLike]) -> list[str]:
        """The argv that runs `argv` inside this sandbox's confinement (the pairing mint's too)."""
        if self.confinement is None:
            return [os.fspath(a) for a in argv]
        return self.confinement.wrap(argv)

    @property
    def userdata(self) -> Path:
        return self.base_dir / "userdata"

    @property
    def one_way(self) -> list[str]:
        """Names of the migrations the candidate added, as (id, name) pairs: after a swap, only a
        restore goes back."""
        return [m.label for m in added(self.migrations_before, self.migrations_after)]

    def migration_report(self) -> str:
        def top(rows: list[Migration]) -> str:
            return str(rows[-1].id) if rows else "none"

        one_way = self.one_way
        text = f"migrations {top(self.migrations_before)} -> {top(self.migrations_after)}"
        text += f"; one-way: adds {', '.join(one_way)}" if one_way else "; no schema change"
        if self.database_after and self.database_after != self.database_before:
            text += (f"; moves the database from {self.database_before} to {self.database_after} "
                     f"({self.database_before} is no longer written)")
        if self.diverged:
            text += ("; diverged migration history: the candidate knows "
                     + ", ".join(self.diverged) + " under other names and skips those ids")
        return text

    def startup_token(self) -> str | None:
        """The one-time `Token:` of the startup output: the fallback when minting fails."""
        if self._process is None:
            return None
        for line in self._process.log_text().splitlines():
            stripped = line.strip()
            if stripped.lower().startswith("token:"):
                token = stripped.split(":", 1)[1].strip()
                if token:
                    self.secrets.add(token)
                    return token
        return None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        if self._process is None:
            return ""
        return self._process.log_tail(lines, self.secrets)

    def alive(self) -> bool:
        return self._process is not None and self._process.alive()

    def stop(self) -> None:
        """SIGKILL the process group (a copy that is thrown away needs no graceful shutdown), keep
        the redacted logs as evidence (complete once the group is gone), delete the sandbox. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        try:
            if self._process is not None:
                self._process.stop()
            self._save_evidence()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            _give_back_ports(self)

    def _save_evidence(self) -> None:
        for name, process in self._logs.items():
            process.stop()  # idempotent: its output is complete once the group is gone
            ensure_private_dir(self.evidence_dir)
            atomic_write_text(self.evidence_dir / name, redact(process.log_text(), self.secrets))

    @property
    def evidence(self) -> Path:
        """The candidate's redacted log (written when the sandbox stops)."""
        return self.evidence_dir / f"{self.user}.sandbox-serve.log"

    def __enter__(self) -> SandboxServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _prefix(user: str, home: Path | None) -> str:
    """Sandboxes in the shared temp dir carry a tag of the workdir they belong to, so a night sweeps
    only its own (another t3track on the host, or a test, has its own)."""
    if home is None:
        return f"t3track-sandbox-{user}-"
    import hashlib

    return f"t3track-sandbox-{user}-{hashlib.sha256(str(home).encode()).hexdigest()[:8]}-"


def _sandbox_root(workdir: Path, user: UserConfig, owner: tuple[int, int] | None, notes: list[str]) -> Path:
    ensure_private_dir(workdir)
    fallback_used, home = False, workdir
    if owner is not None and not _traversable_by(workdir, *owner):
        # The user's server could not reach a sandbox under a private state dir.
        fallback = Path(tempfile.gettempdir())
        notes.append(f"{workdir} is not reachable by {user.run_as}; sandbox under {fallback}")
        workdir, fallback_used = fallback, True
    root = Path(tempfile.mkdtemp(prefix=_prefix(user.name, home if fallback_used else None), dir=workdir))
    os.chmod(root, 0o700)
    return root


def _build(server: SandboxServer, config: Config, user: UserConfig) -> None:
    newest = backup_mod.newest_backup(config, user.name)
    if newest is None:
        raise SandboxFailed(f"no backup of {user.name}'s state to build a sandbox from", reason="setup",
                            hint="run `t3track backup` and try again")
    server.backup_path = newest.path
    userdata = ensure_private_dir(server.userdata)
    ensure_private_dir(server.home)
    restore.restore_database(newest, userdata)
    server.copied = _copy_live_files(user, userdata, server.notes)  # never server-runtime.json: it points at production
    server.notes.extend(inert.inert_databases(userdata))  # still our own dir: rows that act at boot, off
    server.migrations_before = database_migrations(userdata)  # still our own dir: read it ourselves
    server.database_before = database_in_use(userdata)


def _remove_runtime_file(server: SandboxServer) -> None:
    """server-runtime.json of the sandbox's own run, removed through a descriptor: the sandbox is its
    user's by now, so no name in it is followed."""
    fd = usertree.open_dir(server.userdata, user=server.user)
    try:
        os.unlink("server-runtime.json", dir_fd=fd)
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)


def _read_after(server: SandboxServer) -> None:
    """The migrations the candidate left and the database it uses, read with the sandbox owner's
    rights (the sandbox is theirs now)."""
    try:
        histories = usertree.live_histories(server.base_dir, user=server.user)
    except EnvironmentFault as exc:
        server.notes.append(f"could not read the migrations the candidate left: {exc.message}")
        return
    server.database_after = next((name for name in DATABASES if histories.get(name)), None)
    server.migrations_after = histories.get(server.database_after, []) if server.database_after else []


class _PortTaken(Exception):
    pass


def _spawn(server: SandboxServer, argv: list[str | Path], env: dict[str, str], port: int) -> runner.Background:
    """Start `serve`: confined, behind the relay, on a listening socket of ours on the host's
    127.0.0.1:`port` (held from now on: no one takes the port between our check and the bind);
    unconfined (a sandbox without a confinement), binding the port itself."""
    if server.confinement is None:
        return runner.start(argv, env=env, cwd=server.home, run_as=server.run_as, grace_s=0)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        try:
            listener.bind(("127.0.0.1", port))
        except OSError:
            raise _PortTaken() from None
        listener.listen(128)
        return runner.start(server.confinement.serving(argv, listen_fd=listener.fileno(), port=port), env=env,
                            cwd=server.home, run_as=server.run_as, grace_s=0, pass_fds=(listener.fileno(),))
    finally:
        listener.close()  # the relay holds its own copy


def _start(server: SandboxServer, executable: Path, expected_version: str | None, *, timeout_s: float,
           log_name: str, port: int | None = None, cancel: threading.Event | None = None) -> runner.Background:
    """Start `serve` and wait until /.well-known/t3/environment answers (with expected_version when
    given). On success the process is returned running; on failure it is killed and SandboxFailed says
    why; when `cancel` is set meanwhile, it is killed and Cancelled raised."""
    what = f"{expected_version or 'the current version'} ({executable}) on {server.user}'s sandbox"
    deadline = time.monotonic() + timeout_s
    for attempt in range(PORT_ATTEMPTS):
        chosen = _take_port(server, port if attempt == 0 else None)
        url = f"http://127.0.0.1:{chosen}"
        argv: list[str | Path] = [executable, "serve", "--host", "127.0.0.1", "--port", str(chosen),
                                  "--base-dir", server.base_dir, "--no-browser"]
        started = time.monotonic()
        try:
            process = _spawn(server, argv, server.env, chosen)
        except _PortTaken:
            continue
        server._process = process
        server._logs[f"{server.user}.{log_name}.log"] = process  # a retry on another port replaces it
        readiness = serving.ReadinessPoll(url)
        try:
            while True:
                if cancel is not None and cancel.is_set():
                    raise Cancelled(f"{server.user}'s sandbox is no longer needed")
                if not process.alive():
                    break
                version = readiness.version(deadline, announced=READY_MARKER in process.log_text())
                if version is not None:
                    if expected_version is not None and version != expected_version:
                        raise SandboxFailed(
                            f"{what} reports serverVersion {version}, expected {expected_version}",
                            reason="wrong-version", log_tail=server.log_tail(),
                            hint="the installed package does not hold the version it claims; reinstall it")
                    server.port, server.url = chosen, url
                    server.startup_s = round(time.monotonic() - started, 3)
                    return process
                if time.monotonic() >= deadline:
                    raise SandboxFailed(
                        f"{what} was not ready within {timeout_s:.0f}s (no answer on {serving.ENVIRONMENT_PATH})",
                        reason="timeout", log_tail=server.log_tail(),
                        hint="raise gates.serve_timeout if the host is slow; otherwise the candidate hangs at start")
                time.sleep(serving.READY_POLL_S)
            process.stop()  # reaps the group and drains the pipe: its last lines are the evidence
            if not (_address_in_use(process.log_text()) and attempt + 1 < PORT_ATTEMPTS):
                host_refused = host_refusal(process.log_text())
                if host_refused is not None:  # 0.1.x: the host's state, not the candidate's fault
                    raise HostRefusedStart(server.user, host_refused[0], host_refused[1], what)
                raise _exited(what, server, process)
        except BaseException:
            process.stop()
            raise
    raise SandboxFailed(f"{what}: every port tried was in use", reason="exit", log_tail=server.log_tail())


def _exited(what: str, server: SandboxServer, process: runner.Background) -> SandboxFailed:
    """Why a candidate that exited before it was ready failed (someone taking its port aside)."""
    refused = REFUSED_HISTORY.search(process.log_text())
    if refused:
        return SandboxFailed(
            f"{what} refuses the database: {refused.group(0)}", reason="diverged-history",
            log_tail=server.log_tail(),
            hint="the user's database carries a migration history this build does not know "
            "(a preview or another branch's build ran on it); restore a backup from before it, "
            "or wait for a build that reconciles it")
    return SandboxFailed(f"{what} exited with {process.proc.returncode} before it was ready",
                         reason="exit", log_tail=server.log_tail(),
                         hint="the candidate cannot start on this user's state; see the evidence log")


def _mint_prior_session(server: SandboxServer, current_executable: Path, *, timeout_s: float,
                        probe_timeout: float, cancel: threading.Event | None = None) -> None:
    """Pair with the current version on the sandbox copy, keep the cookie, stop it: after the
    candidate starts, the cookie tells whether existing sessions survive the upgrade."""
    try:
        process = _start(server, current_executable, None, timeout_s=timeout_s, log_name="sandbox-current",
                         cancel=cancel)
    except SandboxFailed as exc:
        server.prior_session_detail = f"the current version did not start on the sandbox: {exc.message}"
        return
    assert server.url is not None  # set by _start
    try:
        handshake = probe.pairing_handshake(server.url, server.base_dir, current_executable, timeout=probe_timeout,
                                            run_as=server.run_as, env=server.env, token_fallback=server.startup_token,
                                            confine=server.confine)
        server.secrets |= handshake.secrets
        server.prior_session = handshake.cookie
        if handshake.cookie is None:
            server.prior_session_detail = f"the current version did not pair: {handshake.result.detail}"
    finally:
        process.stop()
        server._process = None
    _remove_runtime_file(server)


def serve_candidate(
    config: Config,
    user: UserConfig,
    executable: Path,
    expected_version: str,
    *,
    workdir: Path,
    evidence_dir: Path,
    prior_session_with: Path | None = None,
    cancel: threading.Event | None = None,
) -> SandboxServer:
    """Build the sandbox from `user`'s newest backup and serve `executable` on it until it reports
    `expected_version`. Returns the running server (stop it, or use it in a `with`); raises
    SandboxFailed (everything already cleaned up, evidence written) when it does not come up.

    With `prior_session_with` (the current version's executable), a session is first minted with
    that version on the same copy, for the sessions-survive check. Setting `cancel` while it waits
    for the server tears the sandbox down and raises Cancelled."""
    owner = _owner(user.run_as)
    notes: list[str] = []
    root = _sandbox_root(workdir, user, owner, notes)
    server = SandboxServer(user=user.name, version=expected_version, root=root, base_dir=root / "base",
                           home=root / "home", evidence_dir=evidence_dir, run_as=user.run_as, notes=notes)
    timeout_s = config.gates.serve_timeout.total_seconds()
    try:
        executables = (executable,) if prior_session_with is None else (executable, prior_session_with)
        server.confinement = confine.confinement(root, server.home, user.run_as, executables)  # before any copy
        if server.confinement is not None:
            server.notes.append("confined by bubblewrap: its own network (loopback only) and PID namespace, "
                                "read-only outside the sandbox")
        try:
            _build(server, config, user)
        except (SandboxFailed, EnvironmentFault):
            raise  # a user's odd file, a full disk: the host's fault (exit 3), never the candidate's
        except (T3TrackError, OSError, sqlite3.Error) as exc:
            message = exc.message if isinstance(exc, T3TrackError) else f"{type(exc).__name__}: {exc}"
            raise EnvironmentFault(f"{user.name}: could not build the sandbox in {root}: {message}",
                                   hint="check free space and permissions of state_dir (or the system temp dir)"
                                   ) from None
        if owner is not None:
            _chown_tree(root, *owner)
        port = None
        if prior_session_with is not None:
            _mint_prior_session(server, prior_session_with, timeout_s=timeout_s,
                                probe_timeout=config.gates.probe_timeout.total_seconds(), cancel=cancel)
            port = server.port  # reuse it when free: Era B cookie names carry the port
        server._process = _start(server, executable, expected_version, timeout_s=timeout_s,
                                 log_name="sandbox-serve", port=port, cancel=cancel)
        _read_after(server)
        server.diverged = diverged_pairs(server._process.log_text())
        return server
    except SandboxFailed as exc:
        server.stop()
        exc.evidence = str(server.evidence) if server.evidence.exists() else None
        exc.log_tail = redact(exc.log_tail, server.secrets)
        raise
    except BaseException:  # Ctrl-C or a bug: the sandbox must not outlive us
        server.stop()
        raise


def diverged_pairs(log: str) -> list[str]:
    """The `id:name` entries of a candidate's "history diverges" warning (its `divergent` list), or the
    warning itself when it names none we can read."""
    marker = diverged_marker(log)
    if marker is None:
        return []
    at, text = marker
    after = log[at:]
    listing = after[: after.find("]") + 1] if "]" in after else after.split("\n", 1)[0]
    found = re.findall(r"'(\d+:[^']+)'", listing)
    return found or [f"(the candidate logs: {text})"]


def sweep_stale(workdir: Path, users: tuple[str, ...] = ()) -> list[str]:
    """Remove sandboxes a killed run left in `workdir` (and, for `users`, in the system temp dir,
    where a sandbox goes when state_dir is not reachable by run_as), ending their servers first (call
    with the run lock held, so none of them is in use). A sandbox holds a copy of the user's secrets:
    it must not outlive its run, nor its server the night."""
    swept: list[str] = []
    roots = list(workdir.glob("t3track-sandbox-*")) if workdir.is_dir() else []
    tmp = Path(tempfile.gettempdir())
    if tmp != workdir:
        roots += [p for u in users for p in tmp.glob(_prefix(u, workdir) + "*")]
    for root in roots:
        if root.is_symlink() or not root.is_dir():
            continue  # not one of ours: a name someone else made in a shared dir
        marker = str(root)
        for pid in _pids_mentioning(marker):
            try:
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        shutil.rmtree(root, ignore_errors=True)  # fd-based: never follows a link inside
        swept.append(root.name)
    return swept


def _pids_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(entry.name))
    return pids
