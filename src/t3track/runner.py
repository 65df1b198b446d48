"""The one way t3track starts other programs: argv lists, timeouts, own process group, redaction.

Tests and the fault-injection suite replace this single seam.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from t3track.errors import EnvironmentFault
from t3track.redact import redact

_T = TypeVar("_T")
_R = TypeVar("_R")

KILL_GRACE_S = 5.0
REAP_WAIT_S = 5.0          # after a SIGKILL: how long to wait for the kernel to let the child go
CHILD_UMASK = 0o077        # what a reader run as a user (collect_as) creates is private to that user
LOG_HEAD_BYTES = 64 << 10  # a background child's output kept in memory: the start (the startup token)...
LOG_TAIL_BYTES = 1 << 20   # ...and the newest part; never a file in a directory someone else controls


@dataclass(frozen=True)
class Completed:
    argv: list[str]
    returncode: int | None  # None when it timed out
    stdout: str             # raw: may hold secrets (e.g. a minted credential); never log it unredacted
    stderr: str
    duration_s: float
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def redacted_output(self, secrets: Iterable[str] = (), tail_lines: int = 40) -> str:
        text = (self.stdout + ("\n" if self.stdout and self.stderr else "") + self.stderr).strip()
        lines = redact(text, secrets).splitlines()
        return "\n".join(lines[-tail_lines:])

    def describe(self, secrets: Iterable[str] = ()) -> str:
        what = f"timed out after {self.duration_s:.0f}s" if self.timed_out else f"exited {self.returncode}"
        tail = self.redacted_output(secrets, tail_lines=15)
        # only the program's name: later arguments can be URLs that carry tokens (webhooks)
        return f"`{Path(self.argv[0]).name} …` {what}" + (f":\n{tail}" if tail else "")


def account(name: str) -> tuple[int, int]:
    """uid and gid of a Linux account; a missing one is the host's fault (exit 3), never a traceback."""
    import pwd

    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise EnvironmentFault(f"there is no Linux user {name!r} (named by run_as)",
                               hint="create the account, or fix run_as in the config (`t3track config check`)") from None
    return entry.pw_uid, entry.pw_gid


def _child_kwargs(run_as: str | None) -> dict:
    kwargs: dict = {"process_group": 0}
    if run_as is not None and os.geteuid() == 0:
        uid, gid = account(run_as)
        kwargs.update(user=uid, group=gid, extra_groups=[])
    return kwargs


def kill_group(proc: subprocess.Popen, grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM the whole process group, wait, then SIGKILL what is left; with `grace_s` 0, SIGKILL at once.

    The group is the child's own (started with process_group=0), so its id is the child's pid."""
    if proc.poll() is None or _group_alive(proc.pid):
        if grace_s > 0:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        if _group_alive(proc.pid):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=max(grace_s, REAP_WAIT_S))
        except subprocess.TimeoutExpired:
            pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run(
    argv: Sequence[str | os.PathLike],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    run_as: str | None = None,
    stdin: str | None = None,
) -> Completed:
    """Run to completion in its own process group; on timeout the whole group is killed."""
    args = [os.fspath(a) for a in argv]
    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            text=True,
            errors="replace",
            **_child_kwargs(run_as),
        )
    except FileNotFoundError:
        raise EnvironmentFault(f"cannot run {args[0]}: not found",
                               hint="check that it is installed and on PATH") from None
    except PermissionError:
        raise EnvironmentFault(f"cannot run {args[0]}: permission denied") from None
    try:
        out, err = proc.communicate(input=stdin, timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        timed_out = True
    except BaseException:  # Ctrl-C: never leave the group behind
        kill_group(proc)
        raise
    if not timed_out and _group_alive(proc.pid):
        kill_group(proc)  # a daemonised grandchild must not outlive the command
    return Completed(args, None if timed_out else proc.returncode, out or "", err or "",
                     time.monotonic() - started, timed_out)


class OutputBuffer:
    """A child's output read from a pipe by a thread: the first LOG_HEAD_BYTES and the newest
    LOG_TAIL_BYTES, so a chatty (or hostile) child can neither fill the memory nor the disk."""

    def __init__(self, fd: int):
        self._fd = fd
        self._head = bytearray()
        self._tail = bytearray()
        self._dropped = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            while chunk := os.read(self._fd, 65536):
                with self._lock:
                    room = LOG_HEAD_BYTES - len(self._head)
                    if room > 0:
                        self._head += chunk[:room]
                        chunk = chunk[room:]
                    self._tail += chunk
                    if len(self._tail) > LOG_TAIL_BYTES:
                        cut = len(self._tail) - LOG_TAIL_BYTES
                        self._dropped += cut
                        del self._tail[:cut]
        except OSError:
            pass
        finally:
            os.close(self._fd)

    def text(self) -> str:
        with self._lock:
            gap = f"\n[... {self._dropped} bytes not kept ...]\n".encode() if self._dropped else b""
            data = bytes(self._head) + gap + bytes(self._tail)
        return data.decode("utf-8", errors="replace")

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


@dataclass
class Background:
    """A long-running child (a sandboxed server). Its output is read from a pipe into memory
    (`log_path` None) or, for tests and tools, written to a file of the caller's own.

    `grace_s`: how long `stop()` lets the group shut down after SIGTERM before the SIGKILL; 0 for a
    child that needs no graceful shutdown (a sandbox: its output is kept and its copy is thrown away),
    which is then SIGKILLed at once (the real server takes ~3 s to exit on SIGTERM)."""

    argv: list[str]
    log_path: Path | None
    proc: subprocess.Popen
    started: float = field(default_factory=time.monotonic)
    output: OutputBuffer | None = None
    grace_s: float = KILL_GRACE_S

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        if self.output is not None:
            return self.output.text()
        if self.log_path is None:
            return ""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30, secrets: Iterable[str] = ()) -> str:
        return "\n".join(redact(self.log_text(), secrets).splitlines()[-lines:])

    def stop(self) -> None:
        kill_group(self.proc, self.grace_s)
        if self.output is not None:
            self.output.join(timeout=KILL_GRACE_S)  # the last lines, once the group is gone

    def __enter__(self) -> Background:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start(
    argv: Sequence[str | os.PathLike],
    *,
    log_path: Path | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    run_as: str | None = None,
    grace_s: float = KILL_GRACE_S,
    pass_fds: Sequence[int] = (),
) -> Background:
    """Start a child in its own process group. Its output (which may hold the startup token) is read
    from a pipe; read it through `log_tail` (redacted). With `log_path` it goes to that file instead,
    created new (never through a link): only for a directory no one else can write. `grace_s`: see
    Background. `pass_fds` are inherited by the child alone."""
    args = [os.fspath(a) for a in argv]
    kwargs = _child_kwargs(run_as)
    if log_path is not None:
        read_fd, write_fd = -1, os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                                         | os.O_CLOEXEC, 0o600)
    else:
        read_fd, write_fd = os.pipe()
    try:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=write_fd, stderr=subprocess.STDOUT,
                                env=dict(env) if env is not None else None, cwd=cwd,
                                pass_fds=tuple(pass_fds), **kwargs)
    except FileNotFoundError:
        _close(read_fd)
        raise EnvironmentFault(f"cannot run {args[0]}: not found") from None
    except PermissionError:
        _close(read_fd)
        who = f" as {run_as}" if run_as else ""
        raise EnvironmentFault(f"cannot run {args[0]}{who}: permission denied",
                               hint=f"the executable and every directory above it must be readable and "
                               f"searchable{who} (root/versions is 0755 by default)") from None
    finally:
        os.close(write_fd)
    return Background(args, log_path, proc, output=OutputBuffer(read_fd) if read_fd >= 0 else None, grace_s=grace_s)


def _close(fd: int) -> None:
    if fd >= 0:
        os.close(fd)


# ---------------------------------------------------------------- work done with another user's rights


@dataclass(frozen=True)
class Collected:
    returncode: int | None  # None when it was killed (timeout, or more output than allowed)
    stdout: bytes           # b"" when a sink took it
    stderr: str
    problem: str | None = None  # why it was killed


def collect_as(argv: Sequence[str | os.PathLike], *, uid: int, gid: int, timeout: float, max_bytes: int,
               sink: Callable[[bytes], None] | None = None, pass_fds: Sequence[int] = ()) -> Collected:
    """Run argv with `uid`/`gid` and no supplementary groups (the kernel, not t3track, then decides
    what it may read), binary stdout read by us: at most `max_bytes`, within `timeout` seconds, else
    the group is killed. With `sink`, stdout is handed over chunk by chunk. Only `pass_fds` (say a
    directory opened without following links) are inherited; stdin is empty."""
    args = [os.fspath(a) for a in argv]
    kwargs: dict = {"process_group": 0, "umask": CHILD_UMASK}
    if os.geteuid() != uid or os.getegid() != gid:
        kwargs.update(user=uid, group=gid, extra_groups=[])
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, cwd="/", close_fds=True,
                            pass_fds=tuple(pass_fds), **kwargs)
    assert proc.stdout is not None and proc.stderr is not None
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    errors = bytearray()
    received = 0
    problem: str | None = None
    streams = {proc.stdout.fileno(): "out", proc.stderr.fileno(): "err"}
    try:
        while streams and problem is None:
            left = deadline - time.monotonic()
            if left <= 0:
                problem = f"did not finish within {timeout:g}s"
                break
            ready, _, _ = select.select(list(streams), [], [], min(left, 1.0))
            for fd in ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    del streams[fd]
                elif streams[fd] == "err":
                    errors += chunk[: max(0, 4096 - len(errors))]
                else:
                    received += len(chunk)
                    if received > max_bytes:
                        problem = f"sent more than {max_bytes} bytes"
                        break
                    if sink is not None:
                        sink(chunk)
                    else:
                        chunks.append(chunk)
    except BaseException:
        kill_group(proc, grace_s=0.5)
        raise
    finally:
        if problem is not None:
            kill_group(proc, grace_s=0.5)
        proc.stdout.close()
        proc.stderr.close()
    try:
        returncode: int | None = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        kill_group(proc, grace_s=0.5)
        returncode, problem = None, problem or f"did not exit within {timeout:g}s"
    if problem is not None:
        returncode = None
    return Collected(returncode, b"".join(chunks), errors.decode("utf-8", errors="replace"), problem)


def scrubbed_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A minimal environment for a sandboxed child: no inherited secrets, HOME in the sandbox."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "T3CODE_TELEMETRY_ENABLED": "false",  # also stops relay tracing (t3code-contract.md)
        "OTEL_SDK_DISABLED": "true",          # no OpenTelemetry exporter, whatever a build configures
        "NO_COLOR": "1",
    }
    env.update(extra or {})
    return env
