"""A real systemd as PID 1, for tests: systemd-nspawn booting this machine's own `/` under a
throw-away overlay (`--volatile=overlay`), so every package here (Python, Node, npm) is there and
every write inside vanishes at poweroff. Boots in well under a second.

    with Container("t3t-gw0-mod", binds=[REPO]) as box:      # boots; powers off and cleans up on exit
        box.run("systemctl", "start", "t3track.service", check=False)
        box.journal("t3track.service")

The container has its own network namespace with only `lo`. `run` enters the container's
namespaces with nsenter, outside its unit tree: a process that must get a unit's sandbox is
started with systemctl (or `systemd-run --wait --pipe`). Needs root and systemd-nspawn (Debian:
systemd-container; scripts/test.sh installs it). Nothing here stops a process it did not start.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

BOOT_TIMEOUT_S = 30.0
POWEROFF_TIMEOUT_S = 30.0
# On these images postgresql is installed and enabled; the container does not need it.
MASKED = ("postgresql.service", "postgresql@15-main.service")


class NspawnUnavailable(RuntimeError):
    pass


def unavailable_reason() -> str | None:
    """Why a container cannot be booted here, or None."""
    if os.geteuid() != 0:
        return "needs root (systemd-nspawn)"
    if shutil.which("systemd-nspawn") is None:
        return "systemd-nspawn is missing: apt-get install systemd-container (scripts/test.sh does)"
    if shutil.which("nsenter") is None or shutil.which("unshare") is None:
        return "nsenter/unshare (util-linux) are missing"
    return None


def _cgroup_dirs(name: str) -> list[Path]:
    """A cgroup of our own in each hierarchy nspawn uses, so its payload/ and supervisor/ groups land
    under it instead of at the root (there is no systemd on this machine to hand out a scope)."""
    base = Path("/sys/fs/cgroup")
    leaf = f"t3track-nspawn-{name}"
    if _fstype(base) == "cgroup2fs":
        return [base / leaf]
    return [base / h / leaf for h in ("unified", "systemd") if (base / h).is_dir()]


def _fstype(path: Path) -> str:
    return subprocess.run(["stat", "-fc", "%T", str(path)], capture_output=True, text=True).stdout.strip()


class Container:
    def __init__(self, name: str, *, binds: Sequence[Path] = (), binds_ro: Sequence[Path] = (),
                 work_dir: Path | None = None):
        if len(name) > 60 or not name.replace("-", "").isalnum():
            raise ValueError(f"container name {name!r}: letters, digits and '-' only, at most 60")
        self.name = name
        self.binds = [Path(b) for b in binds]          # seen at the same path inside, writable
        self.binds_ro = [Path(b) for b in binds_ro]    # the same, read-only
        self.work_dir = Path(work_dir or f"/run/t3track-nspawn/{name}")
        self.nspawn: subprocess.Popen | None = None
        self.leader: int | None = None
        self.boot_s: float | None = None
        self.poweroff_s: float | None = None
        self._cgroups: list[Path] = []
        self._made_run_nspawn = False

    # ------------------------------------------------------------ lifecycle

    def boot(self) -> Container:
        reason = unavailable_reason()
        if reason:
            raise NspawnUnavailable(reason)
        hostroot = self.work_dir / "hostroot"
        hostroot.mkdir(parents=True, exist_ok=True)
        self._cgroups = _cgroup_dirs(self.name)
        for cgroup in self._cgroups:
            cgroup.mkdir(exist_ok=True)
        run_nspawn = Path("/run/systemd/nspawn")
        if not run_nspawn.is_dir():
            run_nspawn.mkdir(parents=True)
            self._made_run_nspawn = True
        args = ["--register=no", "--keep-unit", f"--machine={self.name}", "--console=read-only", "--boot",
                f"--directory={hostroot}", "--volatile=overlay", "--private-network"]
        args += [f"--bind={b}:{b}" for b in self.binds]
        args += [f"--bind-ro={b}:{b}" for b in self.binds_ro]
        args += [f"systemd.mask={unit}" for unit in MASKED]
        # nspawn refuses `-D /` itself: hand it a non-recursive bind of / made in a private mount
        # namespace, with its own tmpfs on /run/systemd/nspawn (this image's /run is plain disk,
        # where nspawn refuses to clean up), so neither mount is seen by the machine.
        inner = ("mount --bind / {root} && mkdir -p /run/systemd/nspawn && "
                 "mount -t tmpfs -o mode=0755 tmpfs /run/systemd/nspawn && exec systemd-nspawn {args}").format(
            root=shlex.quote(str(hostroot)), args=" ".join(shlex.quote(a) for a in args))
        procs = " ".join(shlex.quote(str(c / "cgroup.procs")) for c in self._cgroups)
        outer = f"for f in {procs}; do echo $$ >\"$f\"; done; exec unshare --mount --propagation private bash -c {shlex.quote(inner)}"
        log = open(self.work_dir / "console.log", "wb")
        started = time.monotonic()
        self.nspawn = subprocess.Popen(["bash", "-c", outer], stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        try:
            self.leader = self._wait_for_leader(started + BOOT_TIMEOUT_S)
            state = self._wait_running(started + BOOT_TIMEOUT_S)
        except BaseException:
            self.teardown()
            raise
        self.boot_s = time.monotonic() - started
        if state not in ("running", "degraded"):
            console = self.console()
            self.teardown()
            raise RuntimeError(f"container {self.name} is {state!r} after {BOOT_TIMEOUT_S:.0f}s:\n{console[-3000:]}")
        return self

    def _wait_for_leader(self, deadline: float) -> int:
        """The container's PID 1: the child of nspawn (the pid Popen holds, after its execs) that is systemd."""
        assert self.nspawn is not None
        while time.monotonic() < deadline:
            if self.nspawn.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited {self.nspawn.returncode}:\n{self.console()[-3000:]}")
            for child in _children(self.nspawn.pid):
                if os.path.basename(_exe(child)) == "systemd":
                    return child
            time.sleep(0.02)
        raise RuntimeError(f"no container PID 1 after {BOOT_TIMEOUT_S:.0f}s:\n{self.console()[-3000:]}")

    def _wait_running(self, deadline: float) -> str:
        state = ""
        while time.monotonic() < deadline:
            state = self.run("systemctl", "is-system-running", check=False, timeout=10).stdout.strip()
            if state in ("running", "degraded"):
                return state
            time.sleep(0.03)
        return state

    def teardown(self) -> None:
        """Power off (nspawn turns SIGTERM into a clean shutdown inside), wait, SIGKILL only what is
        ours if it hangs, then remove our cgroups and directories. Safe to call twice."""
        if self.nspawn is not None and self.nspawn.poll() is None:
            started = time.monotonic()
            nspawn_pid = self._nspawn_pid()
            if nspawn_pid is not None:
                os.kill(nspawn_pid, signal.SIGTERM)
            try:
                self.nspawn.wait(timeout=POWEROFF_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.nspawn.pid, signal.SIGKILL)  # the session we started, nothing else
                self.nspawn.wait(timeout=10)
            self.poweroff_s = time.monotonic() - started
        for cgroup in self._cgroups:
            for path in sorted(cgroup.rglob("*"), key=lambda p: len(p.parts), reverse=True) if cgroup.is_dir() else []:
                if path.is_dir():
                    _rmdir(path)
            _rmdir(cgroup)
        if self._made_run_nspawn:
            _rmdir(Path("/run/systemd/nspawn"))
            self._made_run_nspawn = False
        if self.work_dir.is_dir():
            hostroot = self.work_dir / "hostroot"
            if hostroot.is_dir() and not os.path.ismount(hostroot):
                _rmdir(hostroot)
            (self.work_dir / "console.log").unlink(missing_ok=True)
            _rmdir(self.work_dir)
            _rmdir(self.work_dir.parent)  # /run/t3track-nspawn, once no container is left in it

    def _nspawn_pid(self) -> int | None:
        """The systemd-nspawn process: our Popen's pid once bash and unshare have exec'd into it."""
        assert self.nspawn is not None
        if "systemd-nspawn" in _cmdline(self.nspawn.pid):
            return self.nspawn.pid
        return None

    def __enter__(self) -> Container:
        return self.boot()

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    # ------------------------------------------------------------ inside

    def run(self, *argv: str | Path, check: bool = True, timeout: float = 120, input: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run argv inside the container (all its namespaces), as root, with a clean environment."""
        if self.leader is None:
            raise RuntimeError(f"container {self.name} is not booted")
        base = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
                "LANG": "C.UTF-8", "TERM": "dumb"}
        done = subprocess.run(["nsenter", f"--target={self.leader}", "--all", "--", "env", "-i",
                               *[f"{k}={v}" for k, v in {**base, **(env or {})}.items()], *map(str, argv)],
                              capture_output=True, text=True, timeout=timeout, input=input,
                              stdin=None if input is not None else subprocess.DEVNULL)
        if check and done.returncode != 0:
            raise AssertionError(f"in {self.name}: {shlex.join(map(str, argv))} exited {done.returncode}\n"
                                 f"--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}")
        return done

    def sh(self, script: str, **kwargs) -> subprocess.CompletedProcess:
        return self.run("bash", "-euo", "pipefail", "-c", script, **kwargs)

    def journal(self, *args: str, unit: str | None = None, priority: str | None = None) -> str:
        """This boot's journal lines (`-o cat`: messages only), for a unit and/or a priority."""
        argv = ["journalctl", "-b", "--no-pager", "-o", "cat"]
        if unit:
            argv += ["-u", unit]
        if priority:
            argv += ["-p", priority]
        return self.run(*argv, *args, check=False).stdout

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        """A file inside the container (through PID 1's root: the overlay, not this machine)."""
        self.run("install", "-D", "-m", f"{mode:o}", "/dev/stdin", path, input=text)

    def console(self) -> str:
        try:
            return (self.work_dir / "console.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""


def _children(pid: int) -> list[int]:
    found = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return []
    for task in tasks:
        try:
            found += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except (FileNotFoundError, ValueError):
            continue
    return found


def _exe(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return ""


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _rmdir(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def nspawn_processes() -> list[int]:
    """PIDs of every systemd-nspawn on this machine (the tier's teardown check: none may be left)."""
    return [int(p.name) for p in Path("/proc").iterdir()
            if p.name.isdigit() and _cmdline(int(p.name)).split(" ", 1)[0].endswith("systemd-nspawn")]
