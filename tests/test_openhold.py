"""t3track.host.openhold: what one process group opens in a directory waits until release().

Real fanotify, real child processes: the opener prints when its open() returned. It needs
CAP_SYS_ADMIN (root outside a container); without it the hold is None and the sandbox does without."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from t3track.host import openhold

OPENER = "import sys, time; f = open(sys.argv[1], 'ab'); print('opened', time.monotonic(), flush=True)"
STOPPED_OPENER = "import os, signal; os.kill(os.getpid(), signal.SIGSTOP); " + OPENER


pytestmark = pytest.mark.skipif(not openhold.available(), reason="fanotify permission events need CAP_SYS_ADMIN")


def opener(path: Path, *, stopped: bool = False) -> subprocess.Popen:
    """A child that opens `path` and says so, in its own process group; `stopped`: it stops itself
    first (SIGSTOP) so its group can be named before it opens anything."""
    child = subprocess.Popen([sys.executable, "-c", STOPPED_OPENER if stopped else OPENER, str(path)],
                             stdout=subprocess.PIPE, text=True, process_group=0)
    if stopped:
        for _ in range(500):
            if open(f"/proc/{child.pid}/stat").read().rsplit(")", 1)[1].split()[0] == "T":
                break
            time.sleep(0.01)
        else:
            raise AssertionError("the opener never stopped")
    return child


def opened_within(child: subprocess.Popen, seconds: float) -> bool:
    try:
        child.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return False
    return child.returncode == 0 and child.stdout is not None and child.stdout.read().startswith("opened")


def hold_on(directory: Path) -> openhold.OpenHold:
    hold = openhold.OpenHold.start(directory, user="alice")
    assert hold is not None
    return hold


def held_opener(directory: Path, hold: openhold.OpenHold, name: str = "state.sqlite") -> subprocess.Popen:
    child = opener(directory / name, stopped=True)
    hold.hold_group(child.pid)
    os.kill(child.pid, signal.SIGCONT)
    return child


def test_what_the_held_group_opens_waits_for_release_and_nothing_else_does(tmp_path):
    hold = hold_on(tmp_path)
    held = held_opener(tmp_path, hold)
    try:
        assert hold.first_held.wait(10)
        assert not opened_within(held, 0.5)  # still inside open()
        # anyone else, a user's process among them, and this process itself: never held
        assert opened_within(opener(tmp_path / "state.sqlite"), 10)
        (tmp_path / "state.sqlite").read_bytes()
        hold.release()
        assert opened_within(held, 10)
        assert hold.held_names == ["state.sqlite"]
    finally:
        hold.release()
        held.kill()
        held.wait()
    again = opener(tmp_path / "state.sqlite")
    assert opened_within(again, 10)  # released: no longer watched


def test_any_file_the_held_group_opens_there_waits_not_only_a_database(tmp_path):
    """A build that opens something else first (or keeps its database under another name) still
    waits at its first touch of the directory."""
    hold = hold_on(tmp_path)
    held = held_opener(tmp_path, hold, name="environment-id")
    try:
        assert hold.first_held.wait(10)
        assert not opened_within(held, 0.5)
    finally:
        hold.release()
    assert opened_within(held, 10)
    assert hold.held_names == ["environment-id"]


def test_a_watcher_that_dies_lets_everything_through(tmp_path, monkeypatch):
    hold = hold_on(tmp_path)

    def broken(*_args):  # noqa: ANN002, ANN202
        raise RuntimeError("the watcher fails")

    monkeypatch.setattr(hold, "_holds", broken)
    held = held_opener(tmp_path, hold)
    try:
        assert opened_within(held, 10)  # the watcher died on this event: the group closed, the open went on
    finally:
        held.kill()
        held.wait()
    hold.release()  # nothing left to do, and no error


def test_a_held_open_goes_through_when_the_holder_is_killed(tmp_path):
    """Closing the fanotify group allows what it held: a t3track killed mid-gate leaves no open hanging."""
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from t3track.host import openhold
        hold = openhold.OpenHold.start(Path({str(tmp_path)!r}), user="alice")
        hold.hold_group(int(sys.stdin.readline()))
        print("holding", flush=True)
        time.sleep(60)
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    held = opener(tmp_path / "state.sqlite", stopped=True)
    try:
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.write(f"{held.pid}\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "holding"
        os.kill(held.pid, signal.SIGCONT)
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
    assert openhold.OpenHold.start(link, user="alice") is None
    monkeypatch.setattr(openhold, "_libc", lambda: None)
    assert openhold.OpenHold.start(real, user="alice") is None


def test_release_is_idempotent_and_closes_what_it_opened(tmp_path):
    before = set(os.listdir("/proc/self/fd"))
    hold = hold_on(tmp_path)
    hold.release()
    hold.release()
    assert set(os.listdir("/proc/self/fd")) <= before
