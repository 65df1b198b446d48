"""An inert rehearsal (issue 25; t3code-contract.md, "Agents, and what a copy can do"): the candidate,
started on a copy of a user whose every switch is on, starts no provider, resumes no turn, pulls
nothing, runs no task or queued effect, connects to nothing outside its loopback and writes nothing
outside its copy, while still passing its gates.

Two layers do it, and each is shown to hold on its own: the copy's switches (t3track.host.inert)
and the kernel's box (t3track.host.confine). A control run with neither shows that the emulator
(tests/emulator, the flags of `act_at_boot`) and the real 0.0.42 do act on the world, so that
"nothing happened" means something. The user's world (project, the logging `codex` and `claude`
first on PATH) lives outside every directory the box makes private, so only the read-only view
keeps the candidate off it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tests.emulator import package as emu
from tests.real_t3 import REPO, host_config, live_base_dir, processes_mentioning, serving
from tests.support.state import outside_the_box

from t3track.config import Config
from t3track.host import backup, confine, inert
from t3track.night.gates import run_gates

NEXT = "0.0.43-nightly.20261126.2901"
STAND_IN = """#!/bin/sh
# a logging stand-in for the user's {name}: what ran it, where; then what an agent does
printf '%s %s cwd=%s\\n' "{name}" "$*" "$PWD" >>"{log}"
echo "{name} was here" >>"$PWD/.agent-was-here"
case "$1" in app-server) while :; do sleep 1; done ;; esac
case "$*" in *stream-json*) while :; do sleep 1; done ;; esac
echo "{name} 9.9.9"
"""


class Listener:
    """A TCP listener that records every connection it gets (the rehearsal must make none)."""

    def __init__(self, address: str):
        self.sock = socket.create_server((address, 0))
        self.sock.settimeout(0.2)
        self.address = f"{address}:{self.sock.getsockname()[1]}"
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.sock.accept()
            except OSError:
                continue
            with connection:
                connection.settimeout(2)
                with contextlib.suppress(OSError):
                    self.received.append(connection.recv(4096))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def host_address() -> str:
    """This machine's own non-loopback address (the one its default route leaves from)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe_socket:
        probe_socket.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent
        address = probe_socket.getsockname()[0]
    assert not address.startswith("127."), "this machine needs a non-loopback address for the test"
    return address


@dataclass
class World:
    """A user's world outside T3: a project checkout behind its upstream, stand-ins on PATH, listeners."""

    top: Path
    project: Path = field(init=False)
    log: Path = field(init=False)
    listeners: list[Listener] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.project = self.top / "src" / "app"
        self.log = self.top / "agents.log"

    def snapshot(self) -> dict[str, bytes]:
        return {p.relative_to(self.top).as_posix(): p.read_bytes()
                for p in sorted(self.top.rglob("*")) if p.is_file() and not p.is_symlink()}

    def connections(self) -> list[bytes]:
        return [data for listener in self.listeners for data in listener.received]


def git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "-c", "init.defaultBranch=main",
                    *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@pytest.fixture
def world(monkeypatch) -> Iterator[World]:  # noqa: ANN001
    parent = outside_the_box(REPO)
    parent.mkdir(parents=True, exist_ok=True)
    top = Path(tempfile.mkdtemp(prefix="rehearsal-world-", dir=parent))  # not under /tmp: the box hides /tmp
    made = World(top)
    try:
        bin_dir = top / "bin"
        bin_dir.mkdir()
        for name in ("codex", "claude"):
            path = bin_dir / name
            path.write_text(STAND_IN.format(name=name, log=made.log))
            path.chmod(0o755)
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")  # the sandbox's PATH is ours
        upstream = top / "upstream.git"
        git("init", "--bare", str(upstream), cwd=top)
        git("clone", str(upstream), str(made.project), cwd=top)
        (made.project / "README").write_text("one\n")
        git("add", "README", cwd=made.project)
        git("commit", "-m", "one", cwd=made.project)
        git("push", "origin", "HEAD", cwd=made.project)
        other = top / "other"
        git("clone", str(upstream), str(other), cwd=top)
        (other / "README").write_text("two\n")
        git("commit", "-am", "two", cwd=other)
        git("push", "origin", "HEAD", cwd=other)  # the project is one commit behind: a pull changes it
        shutil.rmtree(other)
        made.listeners = [Listener(host_address()), Listener("127.0.0.1")]
        yield made
    finally:
        for listener in made.listeners:
            listener.close()
        for pid in processes_mentioning(str(top)):  # the control run's orphans
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(top, ignore_errors=True)


def without_the_copys_switches(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(inert, "inert_settings", lambda raw: (raw or b"{}", None))
    monkeypatch.setattr(inert, "inert_databases", lambda userdata: [])
    monkeypatch.setattr(inert, "carried_secret", lambda name: True)


def without_the_box(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(confine, "confinement", lambda *args, **kwargs: None)


def agent_user(world: World, base: Path) -> Path:
    emu.add_agent_work(base, world.project)
    emu.add_cloud_secrets(base, [listener.address for listener in world.listeners])
    return base


def backed_up(tmp_path: Path, base: Path, *, emulated: bool = True) -> Config:
    config = host_config(tmp_path, {"alice": base})
    if emulated:
        config = config.model_copy(update={"executable": emu.EXECUTABLE})
    backup.backup_user(config, config.users[0])
    return config


def rehearse(config: Config, executable: Path, version: str) -> list:
    results = run_gates(config, version, executable, evidence_dir=config.state_dir / "evidence")
    assert [r.outcome for r in results] == ["pass", "pass", "pass"], [r.detail[:600] for r in results]
    return results


def serve_log(results: list) -> str:
    return Path(results[1].evidence).read_text()


def nothing_was_done(world: World, before: dict[str, bytes], live_before: dict[str, bytes], live: Path) -> None:
    assert not world.log.exists(), world.log.read_text()         # no provider started, no turn resumed
    assert world.snapshot() == before                            # nothing pulled, nothing written
    assert world.connections() == []                             # no T3 Connect, on any address
    assert processes_mentioning(str(world.top)) == []            # nothing outlived the gate
    assert snapshot_of(live) == live_before                      # the live tree, byte-identical


def snapshot_of(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def every_vector_on(tmp_path: Path, world: World) -> tuple[Config, Path, Path]:
    base = emu.make_user_state(tmp_path / "alice", migrations=52, rows=2).base_dir
    agent_user(world, base)
    executable = emu.make_install(tmp_path / "candidate", NEXT, **dict.fromkeys(emu.AGENT_VECTORS, True))
    return backed_up(tmp_path, base), base, executable


# ---------------------------------------------------------------- the emulator, every vector on


def test_a_rehearsal_as_shipped_acts_on_nothing_though_every_vector_is_on(tmp_path, world):
    config, base, executable = every_vector_on(tmp_path, world)
    before, live_before = world.snapshot(), snapshot_of(base)
    results = rehearse(config, executable, NEXT)
    nothing_was_done(world, before, live_before, base)
    assert "confined by bubblewrap" in results[1].detail
    assert "T3 Connect secrets not copied" in results[1].detail


def test_the_copys_switches_alone_start_resume_pull_and_connect_nothing(tmp_path, world, monkeypatch):
    without_the_box(monkeypatch)
    config, base, executable = every_vector_on(tmp_path, world)
    before, live_before = world.snapshot(), snapshot_of(base)
    results = rehearse(config, executable, NEXT)
    nothing_was_done(world, before, live_before, base)
    log = serve_log(results)
    assert "agents:" not in log  # it had nothing to act on


def test_the_box_alone_keeps_a_candidate_that_tries_everything_off_the_world(tmp_path, world, monkeypatch):
    without_the_copys_switches(monkeypatch)
    config, base, executable = every_vector_on(tmp_path, world)
    before, live_before = world.snapshot(), snapshot_of(base)
    results = rehearse(config, executable, NEXT)
    log = serve_log(results)
    # it did try each one (its providers even ran, in their own process group)...
    for attempt in ("provider codex: started codex app-server", "continuation of thread-agent",
                    "auto-pull of", "scheduled task nightly-review", "effect effect-1", "T3 Connect link to"):
        assert attempt in log, attempt
    assert "T3 Connect link sent" not in log
    # ...and the world saw none of it, and nothing of it outlived the gate
    nothing_was_done(world, before, live_before, base)


def test_control_without_either_layer_the_emulated_candidate_does_act_on_the_world(tmp_path, world, monkeypatch):
    """What the two layers prevent: this run is the test's own proof that its checks can fail."""
    without_the_copys_switches(monkeypatch)
    without_the_box(monkeypatch)
    config, _, executable = every_vector_on(tmp_path, world)
    before = world.snapshot()
    rehearse(config, executable, NEXT)
    ran = world.log.read_text()
    assert "codex app-server" in ran and "claude --version" in ran
    assert f"codex exec Continue where you left off. cwd={world.project}" in ran
    assert "scheduled task nightly-review" in ran and "effect provider-turn.start" in ran
    assert (world.project / ".agent-was-here").exists()
    assert (world.project / "README").read_text() == "two\n"  # pulled
    assert world.snapshot() != before
    assert any(data.startswith(b"link ") for data in world.connections())
    assert processes_mentioning(str(world.top)) != []  # codex app-server in its own group, orphaned


# ---------------------------------------------------------------- the real 0.0.42


@pytest.mark.real_server
def test_control_the_real_0042_starts_the_users_providers_at_boot(real_state_template, real_t3, tmp_path, world):  # noqa: F811
    base = live_base_dir(real_state_template, tmp_path / "alice")
    (base / "userdata" / "settings.json").write_text('{"providers": {"codex": {"enabled": true}}}\n')
    with serving(real_t3, base):
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not ("codex app-server" in _read(world.log)
                                                   and "claude" in _read(world.log)):
            time.sleep(0.2)
    ran = _read(world.log)
    assert "codex app-server" in ran and "claude --version" in ran, ran


@pytest.mark.real_server
@pytest.mark.parametrize("boxed", [True, False], ids=["as-shipped", "copy-switches-alone"])
def test_a_rehearsal_of_the_real_0042_starts_neither_provider(real_state_template, real_t3, tmp_path, world,  # noqa: F811
                                                              monkeypatch, boxed):
    if not boxed:  # then the stand-ins could write their log: the settings alone keep them from running
        without_the_box(monkeypatch)
    base = live_base_dir(real_state_template, tmp_path / "alice")
    (base / "userdata" / "settings.json").write_text(
        '{"providers": {"codex": {"enabled": true}, "claudeAgent": {"enabled": true}}, '
        '"enableProviderUpdateChecks": true, "continueThreadsAfterServerUpdate": true}\n')
    config = backed_up(tmp_path, base, emulated=False)
    before, live_before = world.snapshot(), snapshot_of(base)
    results = rehearse(config, real_t3, "0.0.42")
    time.sleep(1.0)  # what a boot spawn would have logged by now (the control sees both within seconds)
    nothing_was_done(world, before, live_before, base)
    assert "T3 Code server is ready" in serve_log(results)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""
