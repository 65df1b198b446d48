import os
import sys
import time

from t3track import runner
from t3track.redact import MASK, redact


def test_timeout_kills_the_whole_process_group(tmp_path):
    marker = tmp_path / "child.pid"
    script = f"import subprocess,sys,time; p=subprocess.Popen([sys.executable,'-c','import time; time.sleep(60)']); open({str(marker)!r},'w').write(str(p.pid)); time.sleep(60)"
    result = runner.run([sys.executable, "-c", script], timeout=2)
    assert result.timed_out and result.returncode is None
    grandchild = int(marker.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(grandchild):
        time.sleep(0.05)
    assert not _alive(grandchild)


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_output_is_captured_and_redacted_on_request():
    result = runner.run([sys.executable, "-c", "print('Token: ABCDEFGH2345'); print('ok')"], timeout=10)
    assert result.ok
    assert "ABCDEFGH2345" not in result.redacted_output()
    assert "ok" in result.redacted_output()


def test_background_stop_kills_the_group(tmp_path):
    bg = runner.start([sys.executable, "-c", "import time; print('hi', flush=True); time.sleep(60)"],
                      log_path=tmp_path / "log")
    assert bg.alive()
    bg.stop()
    assert not bg.alive()
    assert oct(os.stat(tmp_path / "log").st_mode & 0o777) == "0o600"


def test_redaction_covers_every_secret_shape():
    text = "\n".join([
        "Token: ABCDEFGH2345",
        "Pairing URL: http://127.0.0.1:3773/pair#token=ABCDEFGH2345",
        '{"credential": "s3cr3t-cred"}',
        "Set-Cookie: t3_session_3773_abcd=eyJhbGciOi.xyz; Path=/; HttpOnly",
        "cookie t3_session=abcdef123456",
        "Authorization: Bearer abc.def.ghi",
        "//127.0.0.1:4873/:_authToken=npm_secret",
    ])
    out = redact(text, secrets=["extra-secret-value"])
    for secret in ["ABCDEFGH2345", "s3cr3t-cred", "eyJhbGciOi", "abcdef123456", "abc.def.ghi", "npm_secret"]:
        assert secret not in out
    assert out.count(MASK) >= 7
    assert redact("the extra-secret-value here", ["extra-secret-value"]) == f"the {MASK} here"


def test_starting_what_the_user_may_not_execute_is_an_environment_error_naming_the_user(tmp_path):
    import pwd

    import pytest

    from t3track.errors import EnvironmentFault

    if os.geteuid() != 0:
        pytest.skip("needs root to run as another user")
    pwd.getpwnam("nobody")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    script = private / "t3"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    with pytest.raises(EnvironmentFault) as info:
        runner.start([script], log_path=tmp_path / "log", run_as="nobody")
    assert "as nobody: permission denied" in info.value.message and "searchable" in info.value.hint


def test_a_background_child_without_grace_is_killed_at_once_not_asked_to_stop(tmp_path):
    """A sandbox needs no graceful shutdown: SIGKILL the group it started, no SIGTERM handler runs."""
    marker = tmp_path / "got-sigterm"
    child = tmp_path / "child.py"
    child.write_text(
        "import signal, subprocess, sys, time\n"
        f"signal.signal(signal.SIGTERM, lambda *_: (open({str(marker)!r}, 'w').close(), time.sleep(30)))\n"
        "grandchild = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print('ready', grandchild.pid, flush=True)\n"
        "time.sleep(60)\n")
    process = runner.start([sys.executable, str(child)], grace_s=0)
    deadline = time.monotonic() + 10
    while "ready" not in process.log_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    grandchild = int(process.log_text().split()[1])
    pids = [process.pid, grandchild]
    process.stop()
    assert not marker.exists()  # never SIGTERMed
    assert _gone(pids) == []  # the grandchild went with it
    assert "ready" in process.log_text()  # the output up to the kill is kept


def _gone(pids: list[int], wait_s: float = 10) -> list[int]:
    """The pids still running once SIGKILL has had time to land: a killed process dies when the
    kernel next schedules it, which on a loaded machine is not at once."""
    deadline = time.monotonic() + wait_s
    while (alive := [pid for pid in pids if _running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.02)
    return alive


def _running(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"
