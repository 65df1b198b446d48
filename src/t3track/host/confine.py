"""The kernel's part of an inert rehearsal: a candidate (and its pairing mint) runs in a bubblewrap
sandbox, beyond the switches t3track.host.inert turns off in the copy.

- its own network namespace (only its loopback): whatever a build would reach (a provider's API, T3
  Connect, a git remote, an OTLP collector) is not there. The probe still gets in: t3track makes the
  listening socket on the host's loopback first and t3track.host.relay, inside the sandbox, joins each
  connection to the server's port in there (a socket keeps the namespace it was made in).
- everything read-only but the sandbox's own directory: the user's home and projects, other users,
  the system. /tmp, /var/tmp and /run are private and empty (see PRIVATE_DIRS).
- its own PID namespace: when the sandbox's first process ends (killed with t3track's process group,
  or by --die-with-parent when t3track dies), the kernel kills every process in it, also those that
  left the process group (`codex app-server` runs in a group of its own).

bwrap runs as the user (the runner drops to run_as first), so it builds these from an unprivileged user
namespace and needs no capability of t3track's; under systemd/t3track.service that takes namespaces
and the mount system calls (see the unit). `confinement()` first runs the box once with `true` (once
per user and process): a host where it cannot be built is the host's fault (exit 3), never the
candidate's.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from t3track import runner
from t3track.errors import EnvironmentFault

BWRAP = "bwrap"
CHECK_TIMEOUT_S = 10.0
INSTALL_HINT = ("install bubblewrap (`apt-get install bubblewrap`) and allow unprivileged user namespaces "
                "(and, under systemd, namespaces and @mount in t3track.service, as shipped)")


def _bwrap() -> str:
    found = shutil.which(BWRAP, path=os.environ.get("PATH", "/usr/bin:/bin")) or shutil.which(BWRAP, path="/usr/bin:/bin")
    if found is None:
        raise EnvironmentFault("cannot confine the rehearsal: bwrap (bubblewrap) is not installed", hint=INSTALL_HINT)
    return found


# Empty and private inside: scratch space that works, and no way to the host's Unix sockets (a socket
# file can be connected to through a read-only mount: the user's D-Bus and systemd --user in
# /run/user/<uid>, agents' sockets in /tmp are ways out of any network namespace).
PRIVATE_DIRS = ("/tmp", "/var/tmp", "/run")


def _under_private(path: Path) -> bool:
    return any(path == Path(top) or Path(top) in path.parents for top in PRIVATE_DIRS)


def _base(bwrap: str, writable: tuple[Path, ...], chdir: Path, fresh_proc: bool, visible: tuple[Path, ...] = ()
          ) -> list[str]:
    # Named, not --unshare-all: these are the namespaces t3track.service allows (no uts, no cgroup).
    argv = [bwrap, "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--die-with-parent",
            "--ro-bind", "/", "/",
            "--dev", "/dev",
            *(["--proc", "/proc"] if fresh_proc else ["--ro-bind", "/proc", "/proc"])]
    for top in PRIVATE_DIRS:
        argv += ["--tmpfs", top]
    for path in visible:  # what it must still see that lives under them (the executable, say)
        if _under_private(path):
            argv += ["--ro-bind", str(path), str(path)]
    for path in writable:
        argv += ["--bind", str(path), str(path)]  # last: a sandbox may live under /tmp
    return [*argv, "--chdir", str(chdir), "--"]


@functools.cache
def _fresh_proc_allowed(bwrap: str, uid: int, gid: int) -> bool | str:
    """Whether a new /proc can be mounted (a systemd unit's ProtectKernelTunables= and the like keep
    an unprivileged namespace from it: then the host's /proc is bound read-only instead). A string:
    why no sandbox can be built at all."""
    why = ""
    for fresh in (True, False):
        argv = _base(bwrap, (), Path("/"), fresh)  # nothing writable for the check
        kwargs: dict = {"process_group": 0}
        if (uid, gid) != (os.geteuid(), os.getegid()):
            kwargs.update(user=uid, group=gid, extra_groups=[])
        try:
            done = subprocess.run([*argv, "true"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=CHECK_TIMEOUT_S, env={"PATH": "/usr/bin:/bin"}, cwd="/", **kwargs)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{type(exc).__name__}: {exc}"
        if done.returncode == 0:
            return fresh
        why = done.stderr.strip()[-300:] or f"bwrap exited {done.returncode}"
    return why


@dataclass(frozen=True)
class Confinement:
    """How a sandbox's processes are started: `wrap(argv)` is the argv to run instead (as the same
    user, through the runner as before)."""

    writable: tuple[Path, ...]  # the sandbox's directory
    chdir: Path
    bwrap: str
    fresh_proc: bool
    visible: tuple[Path, ...] = ()
    # executables under a private dir, by their real path: the links on the way (a test's
    # root/current -> versions/V) are not in the box, only the real directory is bound
    real_paths: tuple[tuple[str, str], ...] = ()

    def wrap(self, argv: Sequence[str | os.PathLike]) -> list[str]:
        real = dict(self.real_paths)
        return [*_base(self.bwrap, self.writable, self.chdir, self.fresh_proc, self.visible),
                *(real.get(os.fspath(a), os.fspath(a)) for a in argv)]

    def serving(self, argv: Sequence[str | os.PathLike], *, listen_fd: int, port: int) -> list[str]:
        """`argv` (a server listening on 127.0.0.1:`port` inside) behind the relay, which accepts on
        `listen_fd` (pass it to the child)."""
        from t3track.host.usertree import interpreter

        return self.wrap([interpreter(), "-I", "-S", "-c", _relay_source(), str(listen_fd), str(port), *argv])


def _install_of(executable: Path) -> Path:
    """What an executable needs beside it: the npm prefix it was installed into (the parent of its
    outermost node_modules: bundled and optional dependencies live there), else its directory."""
    tops = [i for i, part in enumerate(executable.parts) if part == "node_modules"]
    return Path(*executable.parts[:tops[0]]) if tops else executable.parent


@functools.cache
def _relay_source() -> str:
    return Path(__file__).with_name("relay.py").read_text(encoding="utf-8")


def confinement(writable: Path, chdir: Path, run_as: str | None, executables: tuple[Path, ...] = ()) -> Confinement:
    """A confinement for a sandbox at `writable` in which `executables` run, checked once per user and
    process; raises EnvironmentFault (exit 3) when this host cannot build one."""
    bwrap = _bwrap()
    uid, gid = runner.account(run_as) if run_as is not None and os.geteuid() == 0 else (os.geteuid(), os.getegid())
    fresh = _fresh_proc_allowed(bwrap, uid, gid)
    if isinstance(fresh, str):
        raise EnvironmentFault(f"cannot confine the rehearsal (bubblewrap as uid {uid}): {fresh}", hint=INSTALL_HINT)
    hidden = [e for e in executables if _under_private(e) or _under_private(e.resolve())]
    visible = tuple(dict.fromkeys(_install_of(e.resolve()) for e in hidden))
    real_paths = tuple((str(e), str(e.resolve())) for e in hidden)
    return Confinement((writable,), chdir, bwrap, fresh, visible, real_paths)
