"""t3track.host.openhold: other processes' opens of a directory's databases wait until release().

Real fanotify, real child processes: the opener prints when its open() returned. Root only (fanotify
permission events need CAP_SYS_ADMIN; without it the hold is None and the sandbox does without it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from t3track.host import openhold

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="fanotify permission events need root")

OPENER = "import sys, time; f = open(sys.argv[1], 'ab'); print('opened', time.monotonic(), flush=True)"


def opener(path: Path, *, group: int | None = 0) -> subprocess.Popen:
    """A child that opens `path` and says so; in its own process group unless `group` names one."""
    return subprocess.Popen([sys.executable, "-c", OPENER, str(path)], stdout=subprocess.PIPE, text=True,
                            process_group=group)


def opened_within(child: subprocess.Popen, seconds: float) -> bool:
    try:
        child.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return False
    return child.returncode == 0 and child.stdout is not None and child.stdout.read().startswith("opened")


def hold_on(directory: Path, allowed_pgid: int = 1) -> openhold.OpenHold:
    hold = openhold.OpenHold.start(directory, allowed_pgid=allowed_pgid, user="alice")
    assert hold is not None, "fanotify is not available here"
    return hold


def test_a_database_open_waits_for_release_and_nothing_else_does(tmp_path):
    hold = hold_on(tmp_path)
    held = opener(tmp_path / "state.sqlite")
    try:
        assert hold.first_held.wait(10)
        assert not opened_within(held, 0.5)  # still inside open()
        assert opened_within(opener(tmp_path / "environment-id"), 10)  # not a database
        (tmp_path / "state.sqlite").read_bytes()  # this process: never held (it would wait on itself)
        hold.release()
        assert opened_within(held, 10)
        assert hold.held_names == ["state.sqlite"]
    finally:
        hold.release()
        held.kill()
        held.wait()
    assert opened_within(opener(tmp_path / "state.sqlite"), 10)  # released: no longer watched


def test_the_servers_own_group_is_never_held(tmp_path):
    leader = subprocess.Popen(["sleep", "30"], process_group=0)
    try:
        hold = hold_on(tmp_path, allowed_pgid=leader.pid)
        try:
            assert opened_within(opener(tmp_path / "state.sqlite", group=leader.pid), 10)
            assert hold.held_names == []
        finally:
            hold.release()
    finally:
        leader.kill()
        leader.wait()


def test_a_held_open_goes_through_when_the_holder_is_killed(tmp_path):
    """Closing the fanotify group allows what it held: a t3track killed mid-gate leaves no open hanging."""
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pathlib import Path
        from t3track.host import openhold
        hold = openhold.OpenHold.start(Path({str(tmp_path)!r}), allowed_pgid=1, user="alice")
        print("holding" if hold else "unavailable", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
    held = opener(tmp_path / "state.sqlite")
    try:
        assert not opened_within(held, 0.5)
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert opened_within(held, 10)
    finally:
        held.kill()
        held.wait()
        holder.kill()
        holder.wait()


def test_no_hold_on_a_link_or_where_fanotify_is_missing(tmp_path, monkeypatch):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "userdata"
    link.symlink_to(real)
    os.lchown(link, 65534, 65534)  # a link the user made: never followed
    assert openhold.OpenHold.start(link, allowed_pgid=1, user="alice") is None
    monkeypatch.setattr(openhold, "_libc", lambda: None)
    assert openhold.OpenHold.start(real, allowed_pgid=1, user="alice") is None


def test_release_is_idempotent_and_closes_what_it_opened(tmp_path):
    before = set(os.listdir("/proc/self/fd"))
    hold = hold_on(tmp_path)
    hold.release()
    hold.release()
    assert set(os.listdir("/proc/self/fd")) <= before
