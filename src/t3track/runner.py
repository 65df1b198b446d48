"""The one way t3track starts other programs: argv lists, timeouts, own process group, redaction.

Tests and the fault-injection suite replace this single seam.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from t3track.errors import EnvironmentFault
from t3track.redact import redact

KILL_GRACE_S = 5.0


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


def _child_kwargs(run_as: str | None) -> dict:
    kwargs: dict = {"process_group": 0}
    if run_as is not None and os.geteuid() == 0:
        import pwd

        entry = pwd.getpwnam(run_as)
        kwargs.update(user=entry.pw_uid, group=entry.pw_gid, extra_groups=[])
    return kwargs


def kill_group(proc: subprocess.Popen, grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM the whole process group, wait, then SIGKILL what is left."""
    if proc.poll() is None or _group_alive(proc.pid):
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
            proc.wait(timeout=grace_s)
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


@dataclass
class Background:
    """A long-running child (a sandboxed server) whose output goes to a log file."""

    argv: list[str]
    log_path: Path
    proc: subprocess.Popen
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 30, secrets: Iterable[str] = ()) -> str:
        return "\n".join(redact(self.log_text(), secrets).splitlines()[-lines:])

    def stop(self) -> None:
        kill_group(self.proc)

    def __enter__(self) -> Background:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start(
    argv: Sequence[str | os.PathLike],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    run_as: str | None = None,
) -> Background:
    """Start a child in its own process group. Its raw log may hold the startup token: callers
    must read it through `log_tail` (redacted) and delete it, never copy it raw."""
    args = [os.fspath(a) for a in argv]
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=fd, stderr=subprocess.STDOUT,
                                env=dict(env) if env is not None else None, cwd=cwd,
                                **_child_kwargs(run_as))
    except FileNotFoundError:
        raise EnvironmentFault(f"cannot run {args[0]}: not found") from None
    except PermissionError:
        who = f" as {run_as}" if run_as else ""
        raise EnvironmentFault(f"cannot run {args[0]}{who}: permission denied",
                               hint=f"the executable and every directory above it must be readable and "
                               f"searchable{who} (root/versions is 0755 by default)") from None
    finally:
        os.close(fd)
    return Background(args, log_path, proc)


def scrubbed_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A minimal environment for a sandboxed child: no inherited secrets, HOME in the sandbox."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "T3CODE_TELEMETRY_ENABLED": "false",
        "NO_COLOR": "1",
    }
    env.update(extra or {})
    return env
