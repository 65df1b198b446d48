"""The sandbox: a candidate serving a copy of a user's backup, and nothing of it left afterwards."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import stat
import tempfile
import time
from pathlib import Path

import pytest
from tests.real_t3 import host_config, live_base_dir, processes_mentioning
from tests.support.state import fake_live_state, script

from t3track.host import backup, sandbox, serving
from t3track.host.sandbox import SandboxFailed, serve_candidate


@pytest.fixture
def fake_host(tmp_path):
    config = host_config(tmp_path, {"alice": fake_live_state(tmp_path / "alice")}, serve_timeout="2s")
    backup.backup_user(config, config.users[0])
    return config


@contextlib.contextmanager
def install_reachable_by_all(executable: Path):  # noqa: ANN201
    """The executable's package dir, hard-linked into a 0755 dir under the system temp dir: the test
    cache may sit in a checkout only root can traverse (CI clones into a 0700 folder), and a
    `run_as` user needs every directory above the executable searchable, as on a real host."""
    top = Path(tempfile.mkdtemp(prefix="t3track-reachable-"))
    try:
        top.chmod(0o755)
        package = top / executable.parent.name
        try:
            shutil.copytree(executable.parent, package, symlinks=True, copy_function=os.link)
        except OSError:  # another filesystem: copy instead
            shutil.rmtree(package, ignore_errors=True)
            shutil.copytree(executable.parent, package, symlinks=True)
        yield package / executable.name
    finally:
        shutil.rmtree(top, ignore_errors=True)


def serve(config, executable, version="0.0.42", **kwargs):  # noqa: ANN001, ANN003, ANN201
    tmp = config.state_dir
    return serve_candidate(config, config.users[0], executable, version, workdir=tmp / "sandboxes",
                           evidence_dir=tmp / "evidence" / "run-1", **kwargs)


def sandboxes_left(config) -> list[Path]:  # noqa: ANN001
    workdir = config.state_dir / "sandboxes"
    return list(workdir.iterdir()) if workdir.exists() else []


# ---------------------------------------------------------------- failures before serving


def test_an_early_exit_fails_with_the_last_log_lines_and_leaves_nothing(fake_host, tmp_path):
    crash = script(tmp_path, "import sys\nprint('Token: SECRETTOKEN12')\nprint('boom: migration 53 failed')\nsys.exit(3)")
    with pytest.raises(SandboxFailed) as caught:
        serve(fake_host, crash)
    assert caught.value.reason == "exit"
    assert "boom: migration 53 failed" in caught.value.log_tail
    assert "SECRETTOKEN12" not in caught.value.log_tail
    assert sandboxes_left(fake_host) == []
    evidence = Path(caught.value.evidence)
    assert "boom" in evidence.read_text() and "SECRETTOKEN12" not in evidence.read_text()
    assert stat.S_IMODE(evidence.stat().st_mode) == 0o600


def test_a_server_that_never_answers_times_out_and_is_killed(fake_host, tmp_path):
    hang = script(tmp_path, "import time\nprint('starting', flush=True)\ntime.sleep(600)", name="t3-hang")
    with pytest.raises(SandboxFailed) as caught:
        serve(fake_host, hang)
    assert caught.value.reason == "timeout"
    assert "serve_timeout" in (caught.value.hint or "")
    assert processes_mentioning(str(hang)) == []
    assert sandboxes_left(fake_host) == []


def test_ctrl_c_while_waiting_kills_the_server_and_removes_the_sandbox(fake_host, tmp_path, monkeypatch):
    hang = script(tmp_path, "import time\ntime.sleep(600)", name="t3-ctrl-c")
    calls = []

    def interrupted(url, timeout):  # noqa: ANN001, ANN202
        calls.append(url)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return None

    monkeypatch.setattr(serving, "server_version", interrupted)
    with pytest.raises(KeyboardInterrupt):
        serve(fake_host, hang)
    assert processes_mentioning(str(hang)) == []
    assert sandboxes_left(fake_host) == []


def test_no_backup_fails_before_anything_starts(tmp_path):
    config = host_config(tmp_path, {"bob": fake_live_state(tmp_path / "bob")})
    with pytest.raises(SandboxFailed) as caught:
        serve(config, tmp_path / "never-run")
    assert caught.value.reason == "setup"
    assert "t3track backup" in caught.value.hint
    assert sandboxes_left(config) == []


def test_the_sandbox_copy_has_secrets_and_settings_but_no_server_runtime(fake_host, tmp_path, monkeypatch):
    seen = {}

    def fake_start(server, executable, expected_version, **kwargs):  # noqa: ANN001, ANN003, ANN202
        userdata = server.userdata
        seen["files"] = sorted(p.relative_to(userdata).as_posix() for p in userdata.rglob("*"))
        seen["secrets_mode"] = stat.S_IMODE((userdata / "secrets").stat().st_mode)
        raise SandboxFailed("stop here", reason="exit")

    monkeypatch.setattr(sandbox, "_start", fake_start)
    with pytest.raises(SandboxFailed):
        serve(fake_host, tmp_path / "unused")
    assert seen["files"] == ["environment-id", "secrets", "secrets/session-signing.bin", "settings.json",
                             "state.sqlite"]
    assert seen["secrets_mode"] == 0o700


# ---------------------------------------------------------------- the real server


@pytest.fixture
def real_host(tmp_path, real_state_template):  # noqa: F811
    config = host_config(tmp_path, {"alice": live_base_dir(real_state_template, tmp_path / "alice")})
    backup.backup_user(config, config.users[0])
    return config


@pytest.mark.real_server
def test_the_real_candidate_serves_the_backup_copy_until_stopped(real_host, real_t3, secret_spy):  # noqa: F811
    server = serve(real_host, real_t3)
    try:
        assert serving.server_version(server.url, timeout=5) == "0.0.42"
        assert server.url.startswith("http://127.0.0.1:")
        assert [m.id for m in server.migrations_before] == list(range(1, 53))
        assert server.migrations_after == server.migrations_before
        assert server.one_way == [] and "no schema change" in server.migration_report()
        live = real_host.users[0].base_dir / "userdata"
        assert (server.userdata / "environment-id").read_text() == (live / "environment-id").read_text()
        runtime = json.loads((server.userdata / "server-runtime.json").read_text())
        assert runtime["port"] == server.port  # the sandbox's own, not production's
        pids = processes_mentioning(str(server.root))
        assert pids
    finally:
        server.stop()
    assert not server.root.exists()
    assert processes_mentioning(str(server.root)) == []
    log = server.evidence.read_text()
    assert "T3 Code server is ready" in log and "Token: [REDACTED]" in log
    assert secret_spy.values and not [v for v in secret_spy.values if v in log]


@pytest.mark.real_server
def test_a_port_taken_before_the_server_binds_is_retried(real_host, real_t3, monkeypatch):  # noqa: F811
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    ports = [taken.getsockname()[1]]
    real_free_port = sandbox.free_port
    monkeypatch.setattr(sandbox, "free_port", lambda: ports.pop() if ports else real_free_port())
    try:
        with serve(real_host, real_t3) as server:
            assert server.port != taken.getsockname()[1]
            assert serving.server_version(server.url, timeout=5) == "0.0.42"
    finally:
        taken.close()


@pytest.mark.real_server
@pytest.mark.skipif(not Path("/proc/self").exists() or __import__("os").geteuid() != 0, reason="needs root")
def test_run_as_serves_as_that_user_from_a_sandbox_it_owns(real_host, real_t3, tmp_path):  # noqa: F811
    import pwd

    nobody = pwd.getpwnam("nobody")
    config = real_host.model_copy(update={"users": [real_host.users[0].model_copy(update={"run_as": "nobody"})]})
    with install_reachable_by_all(real_t3) as executable, serve(config, executable) as server:
        status = Path(f"/proc/{server._process.pid}/status").read_text()
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert uid_line.split()[1] == str(nobody.pw_uid)
        assert server.root.stat().st_uid == nobody.pw_uid
        assert (server.userdata / "state.sqlite").stat().st_uid == nobody.pw_uid
        root = server.root
    assert not root.exists()
    assert processes_mentioning(str(root)) == []


def test_leaving_the_sandbox_block_stops_the_server_and_removes_the_copy(tmp_path):
    from tests.emulator.package import EXECUTABLE, make_install, make_user_state

    make_user_state(tmp_path / "alice", migrations=52, rows=2)
    config = host_config(tmp_path, {"alice": tmp_path / "alice"}).model_copy(update={"executable": EXECUTABLE})
    backup.backup_user(config, config.users[0])
    executable = make_install(tmp_path / "candidate", "0.0.42")
    with serve_candidate(config, config.users[0], executable, "0.0.42", workdir=tmp_path / "work",
                         evidence_dir=tmp_path / "evidence") as server:
        assert serving.server_version(server.url, timeout=5) == "0.0.42"
        assert processes_mentioning(str(server.root))
        root = server.root
    assert not root.exists()
    assert processes_mentioning(str(root)) == []
    assert (tmp_path / "evidence" / "alice.sandbox-serve.log").is_file()


def test_a_sandbox_left_by_a_killed_run_is_swept_with_its_server(tmp_path):
    import subprocess as sp
    import sys as _sys

    from t3track.host.sandbox import sweep_stale

    workdir = tmp_path / "sandboxes"
    stale = workdir / "t3track-sandbox-alice-abc123"
    (stale / "userdata").mkdir(parents=True)
    (stale / "server.log").write_text("Token: ABCDEFGH2345\n")
    orphan = sp.Popen([_sys.executable, "-c", "import time; time.sleep(60)", "--base-dir", str(stale)],
                      process_group=0)
    try:
        # under load the child may not have exec'd yet: sweep once its command line names the sandbox
        deadline = time.monotonic() + 10
        while str(stale).encode() not in Path(f"/proc/{orphan.pid}/cmdline").read_bytes():
            assert time.monotonic() < deadline, "the orphan never started"
            time.sleep(0.01)
        assert sweep_stale(workdir) == ["t3track-sandbox-alice-abc123"]
        assert orphan.wait(timeout=10) != 0
        assert not stale.exists()
    finally:
        if orphan.poll() is None:
            orphan.kill()
