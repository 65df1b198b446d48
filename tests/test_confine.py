"""The rehearsal's box (t3track.host.confine): a host that cannot build it is the host's fault (exit 3),
said before anything of the user's is copied; the candidate's environment turns telemetry off."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.real_t3 import host_config
from tests.support.state import fake_live_state, script

from t3track.errors import EnvironmentFault, ExitCode
from t3track.host import backup, confine, sandbox
from t3track.host.sandbox import serve_candidate


@pytest.fixture
def config(tmp_path):
    made = host_config(tmp_path, {"alice": fake_live_state(tmp_path / "alice")}, serve_timeout="2s")
    backup.backup_user(made, made.users[0])
    return made


def serve(config, executable: Path):  # noqa: ANN001, ANN201
    return serve_candidate(config, config.users[0], executable, "0.0.42", workdir=config.state_dir / "sandboxes",
                           evidence_dir=config.state_dir / "evidence")


def test_a_host_without_bubblewrap_fails_the_night_as_the_hosts_fault_and_copies_nothing(config, tmp_path,
                                                                                       monkeypatch):
    monkeypatch.setattr(confine, "BWRAP", "bwrap-not-installed-here")
    with pytest.raises(EnvironmentFault) as caught:
        serve(config, tmp_path / "never-run")
    assert caught.value.exit_code == ExitCode.ENVIRONMENT
    assert "bwrap (bubblewrap) is not installed" in caught.value.message
    assert "apt-get install bubblewrap" in (caught.value.hint or "")
    assert list((config.state_dir / "sandboxes").iterdir()) == []  # no copy of the user's secrets was made


def test_a_bubblewrap_that_cannot_build_the_box_is_named_with_its_own_words(config, tmp_path, monkeypatch):
    # as where user namespaces are off (sysctl, or Ubuntu's AppArmor restriction without a bwrap profile)
    refusing = script(tmp_path, "import sys\nsys.exit('bwrap: setting up uid map: Permission denied')",
                      name="bwrap-refusing")
    monkeypatch.setattr(confine, "BWRAP", str(refusing))
    confine._fresh_proc_allowed.cache_clear()
    with pytest.raises(EnvironmentFault) as caught:
        serve(config, tmp_path / "never-run")
    confine._fresh_proc_allowed.cache_clear()
    assert "cannot confine the rehearsal" in caught.value.message
    assert "setting up uid map: Permission denied" in caught.value.message
    assert list((config.state_dir / "sandboxes").iterdir()) == []


def test_the_candidates_environment_turns_telemetry_and_opentelemetry_off(tmp_path):
    env = sandbox.SandboxServer(user="alice", version="0.0.42", root=tmp_path, base_dir=tmp_path / "base",
                                home=tmp_path / "home", evidence_dir=tmp_path / "evidence").env
    assert env["T3CODE_TELEMETRY_ENABLED"] == "false" and env["OTEL_SDK_DISABLED"] == "true"
    assert env["HOME"] == str(tmp_path / "home")
