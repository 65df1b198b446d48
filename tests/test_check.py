"""`t3track check` on an emulated host, through the real CLI: the Monitoring Plugins line and exit code
for each state a monitoring system must see, run as root and as an unprivileged monitoring user."""

import json
import os
import pwd
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tests.support.host import nightly
from tests.support.state import traversable_for

from t3track.state import StateStore

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def check(host, *args, user: str | None = None):
    if user is None:
        return host.t3track("check", *args)
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    argv = [sys.executable, "-m", "t3track", "--config", str(host.config_path), "check", *args]
    return subprocess.run(["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", *argv],
                          capture_output=True, text=True, env=env, timeout=60)


def edit_state(host, **changes):
    path = host.state_dir / "state.json"
    state = json.loads(path.read_text())
    state.update(changes)
    path.write_text(json.dumps(state))


@pytest.fixture
def night(host):
    host.publish(nightly(1))
    assert host.t3track("run").returncode == 0
    return host


def test_a_host_after_a_good_night_is_ok_with_perfdata(night):
    done = check(night)
    assert done.returncode == 0, done.stdout + done.stderr
    line = done.stdout.splitlines()[0]
    assert line.startswith(f"T3TRACK OK - {nightly(1)} serves 2 of 2 user(s) | users=2 serving=2 ")
    assert "last_run_age_s=" in line and "consecutive_refusals=0" in line and "oldest_backup_age_s=" in line
    doc = json.loads(check(night, "--json").stdout)
    assert doc["status"] == "OK" and doc["exit_code"] == 0 and doc["line"].split(" | ")[0] == line.split(" | ")[0]


def test_a_server_that_does_not_answer_is_critical_and_named(night):
    night.service("stop", night.users[1])
    done = check(night)
    assert done.returncode == 2
    assert done.stdout.startswith(f"T3TRACK CRITICAL - bob's server is not answering on 127.0.0.1:{night.users[1].port}")


def test_a_journal_left_by_a_killed_run_is_critical(night):
    night.publish(nightly(2))
    assert night.t3track("run", env={"T3TRACK_FAULT_KILL_AT": "verified"}).returncode == -9
    done = check(night)
    assert done.returncode == 2 and "a swap journal was left by a killed run" in done.stdout


def test_a_night_in_progress_is_said_and_the_lock_is_never_taken(night):
    with StateStore(night.state_dir).lock():  # a night holds the lock: check must not even try it
        done = check(night)
    assert done.returncode == 0, done.stdout
    assert f"a night is in progress (pid {os.getpid()}, resolving, installing or rehearsing)" in done.stdout


def test_frozen_by_itself_is_critical_and_an_old_operator_freeze_a_warning(night):
    long_ago = (datetime.now(UTC) - timedelta(days=8)).isoformat()
    edit_state(night, frozen={"reason": "the rollback failed", "by": "t3track", "at": long_ago})
    assert check(night).returncode == 2
    edit_state(night, frozen={"reason": "holidays", "by": "alice-admin", "at": long_ago})
    done = check(night)
    assert done.returncode == 1 and done.stdout.startswith("T3TRACK WARNING - frozen by alice-admin for 8d")


def test_no_run_for_36_hours_is_critical(night):
    state = json.loads((night.state_dir / "state.json").read_text())
    state["last_run"]["at"] = (datetime.now(UTC) - timedelta(hours=37)).isoformat()
    (night.state_dir / "state.json").write_text(json.dumps(state))
    done = check(night)
    assert done.returncode == 2 and "no run for 1d13h" in done.stdout, done.stdout


def test_a_monitoring_user_with_read_access_gets_the_same_answer_and_without_it_unknown(night):
    subprocess.run(["useradd", "--system", "--no-create-home", "t3mon"], check=False)
    pwd.getpwnam("t3mon")
    with traversable_for("t3mon", REPO):  # the checkout may lie in a private directory (mktemp -d)
        monitored_with_and_without_access(night)


def monitored_with_and_without_access(night):
    # without access: the state is unreadable, and that is UNKNOWN (3), never a traceback
    for path in (night.dir, night.state_dir):
        os.chmod(path, 0o700)
    denied = check(night, user="t3mon")
    assert denied.returncode == 3, denied.stdout + denied.stderr
    assert denied.stdout.startswith("T3TRACK UNKNOWN - ") and "Traceback" not in denied.stderr
    # the README's way: read access by ACL on the config, state_dir and backup_dir (and, here only, a way
    # through pytest's private temporary directories, as /etc and /var/lib are on a host)
    for parent in night.dir.parents:
        if parent == Path("/tmp"):
            break
        subprocess.run(["setfacl", "-m", "u:t3mon:x", str(parent)], check=True)
    for path in (night.dir, night.state_dir, night.backup_dir, night.root):
        subprocess.run(["setfacl", "-R", "-m", "u:t3mon:rX", str(path)], check=True)
    granted = check(night, user="t3mon")
    assert granted.returncode == 0, granted.stdout + granted.stderr
    assert granted.stdout.startswith("T3TRACK OK - ")


def test_status_shows_a_night_in_progress_with_its_pid_phase_and_start(night):
    with StateStore(night.state_dir).lock():
        doc = json.loads(night.t3track("status", "--json").stdout)
        text = night.t3track("status").stdout
    assert doc["night"]["pid"] == os.getpid() and doc["night"]["phase"].startswith("before the swap")
    assert doc["night"]["since"] and f"IN PROGRESS: pid {os.getpid()}" in text
    assert json.loads(night.t3track("status", "--json").stdout)["night"] is None  # and gone with the lock


def test_status_says_plainly_when_a_users_server_is_not_answering(night):
    night.service("stop", night.users[0])
    done = night.t3track("status", "--json")
    assert done.returncode == 0
    warnings = json.loads(done.stdout)["warnings"]
    assert f"alice's server is not answering on 127.0.0.1:{night.users[0].port}: " \
           "`systemctl status t3@alice.service`" in warnings


def test_a_user_held_three_nights_running_by_an_agent_is_a_warning(night):
    edit_state(night, held={"alice": {"since": datetime.now(UTC).isoformat(), "nights": 3,
                                      "version": nightly(2)}})
    done = check(night)
    assert done.returncode == 1, done.stdout
    assert done.stdout.startswith("T3TRACK WARNING - alice held on the old version 3 nights running")
    assert "held_users=1" in done.stdout
