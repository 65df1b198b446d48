"""An unprivileged shell (a real user made by `useradd`) on a managed host: a command that changes the
host says in one line that it must run as root and exits 2 before anything is touched; `--help`,
`--version` work; a read-only command that cannot read the state says the same, never a traceback
or exit 4 ("critical")."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from tests.support.host import REPO, build_host, nightly, wait_for_version
from tests.support.state import traversable_for

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0 or shutil.which("useradd") is None,
                                 reason="needs root and useradd: the user must be real")]


@pytest.fixture(scope="module")
def someone():
    name = f"t3nr_{secrets.token_hex(4)}"
    subprocess.run(["useradd", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True)
    try:
        with traversable_for(name, REPO):  # a checkout in a private directory (mktemp -d) is closed to them
            yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], capture_output=True)


@pytest.fixture
def managed(tmp_path):
    """A managed host in a directory anyone may traverse (like /etc/t3track and /var/lib): the config
    is readable (0644), state_dir is root's (0700), as on a real host."""
    top = Path(tempfile.mkdtemp(prefix="t3nr-"))
    top.chmod(0o755)
    host = build_host(top / "host")
    try:
        assert host.t3track("backup").returncode == 0
        host.publish(nightly(1))
        yield host
    finally:
        host.close()
        shutil.rmtree(top, ignore_errors=True)


def interpreter() -> tuple[str, list[str]]:
    """A Python the user may run, with t3track's dependencies: ours may live under root's 0700 home
    (pyenv), so the system's, given our site-packages when its minor version is the same."""
    for candidate in (getattr(sys, "_base_executable", None) or sys.executable, "/usr/bin/python3"):
        if os.access(candidate, os.X_OK) and all(os.stat(p).st_mode & 0o005 == 0o005
                                                  for p in Path(candidate).resolve().parents):
            break
    else:
        pytest.skip("no Python interpreter an unprivileged user may run")
    version = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                             text=True).stdout.strip()
    if version != str(sys.version_info[:2]):
        pytest.skip(f"{candidate} is Python {version}, not ours")
    return candidate, [str(REPO / "src"), *(p for p in sys.path if p.endswith("site-packages"))]


def as_user(account, host, *args: str) -> subprocess.CompletedProcess:
    python, path = interpreter()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": os.pathsep.join(path),
           "HOME": "/nonexistent", "LOGNAME": account.pw_name}
    return subprocess.run([python, "-m", "t3track", "--config", str(host.config_path), *args],
                          capture_output=True, text=True, env=env, user=account.pw_uid, group=account.pw_gid,
                          extra_groups=[], cwd="/", timeout=120)


def snapshot(host) -> dict:
    return {"state": (host.state_dir / "state.json").read_bytes(),
            "history": (host.state_dir / "history.jsonl").read_bytes(),
            "pids": host.server_pids(), "link": host.current_target(),
            "backups": sorted(p.name for p in host.backup_dir.rglob("*"))}


@pytest.mark.parametrize("command", [["freeze", "--reason", "x"], ["unfreeze"], ["pin", nightly(1), "--reason", "x"],
                                     ["deny", nightly(1), "--reason", "x"], ["allow", nightly(1)], ["run"],
                                     ["run", "--to", nightly(1)], ["dry-run"], ["revert", "--to", nightly(1)],
                                     ["drill", "--yes"], ["backup"], ["adopt", "0.0.42"]])
def test_a_command_that_changes_the_host_says_it_needs_root_and_touches_nothing(someone, managed, command):
    before = snapshot(managed)
    done = as_user(someone, managed, *command)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: t3track {command[0]} must run as root; nothing was changed (try: sudo t3track {command[0]})"]
    assert snapshot(managed) == before
    for user in managed.users:
        assert wait_for_version(user.url, "0.0.42", timeout=10) == "0.0.42"
        assert managed.rows(user)                                    # every row still there


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["history"], ["show", "last"],
                                     ["config", "check"]])
def test_a_read_only_command_it_cannot_read_says_so_in_one_line_never_a_traceback(someone, managed, command):
    before = snapshot(managed)
    done = as_user(someone, managed, *command)
    assert done.returncode in (0, 2), done.stdout + done.stderr
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr
    if done.returncode == 2:
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "must run as root" in lines[0] and "sudo t3track" in lines[0]
    assert snapshot(managed) == before


@pytest.mark.parametrize("command", [["--help"], ["--version"], ["freeze", "--help"], ["run", "--help"]])
def test_help_and_version_work_for_anyone(someone, managed, command):
    done = as_user(someone, managed, *command)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
