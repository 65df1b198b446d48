"""`t3track adopt`: bringing a host under t3track, on an empty root and on a hand-made install."""

import json
import os
import shutil

import pytest
from tests.emulator import package as emu
from tests.support.host import build_host, wait_for_version

pytestmark = pytest.mark.slow


@pytest.fixture
def host(tmp_path):
    h = build_host(tmp_path)
    yield h
    h.close()


def empty_root(host):
    """A host t3track has never run on, with nothing installed under root: servers stopped."""
    host.stop_servers()
    shutil.rmtree(host.state_dir)
    (host.root / "current").unlink()
    shutil.rmtree(host.root / "versions")


def handmade_041(host):
    """Unmanaged host: root/current is a plain directory holding 0.0.41, serving both users."""
    empty_root(host)
    emu.make_install(host.root / "current", "0.0.41")
    host.start_servers()


def test_adopt_on_an_empty_root_installs_points_current_and_verifies(host):
    empty_root(host)
    result = host.t3track("adopt", "0.0.42", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["outcome"] == "swapped" and doc["to"] == "0.0.42" and doc["from"] is None
    assert host.current_target() == "versions/0.0.42"
    assert (host.root / "versions" / "0.0.42" / emu.EXECUTABLE).is_file()
    for user in host.users:
        assert wait_for_version(user.url, "0.0.42", timeout=10) == "0.0.42"
    assert host.state()["current"] == "0.0.42"
    assert [e for e in host.history() if e["event"] == "adopt"][-1]["outcome"] == "swapped"


def test_adopt_moves_a_hand_made_install_aside_under_its_own_version(host):
    handmade_041(host)
    rows = {u.name: host.rows(u) for u in host.users}

    result = host.t3track("adopt", "0.0.42", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["from"] == "0.0.41"
    assert (host.root / "current").is_symlink()
    assert host.current_target() == "versions/0.0.42"
    assert (host.root / "versions" / "0.0.41" / emu.EXECUTABLE).is_file()  # the hand-made tree, moved
    for user in host.users:
        assert host.serving(user) == "0.0.42"
        assert host.rows(user) == rows[user.name]
    state = host.state()
    assert state["current"] == "0.0.42" and state["previous"] == "0.0.41"


def test_adopt_that_fails_live_rolls_back_to_the_hand_made_install(host):
    handmade_041(host)
    host.publish("0.0.43", fault="no-cookie-live", tag=None)  # serves, but pairs without a cookie live

    result = host.t3track("adopt", "0.0.43", "--json")
    assert result.returncode == 1, result.stderr
    doc = json.loads(result.stdout)
    assert doc["outcome"] == "rolled_back" and doc["from"] == "0.0.41"
    assert host.current_target() == "versions/0.0.41"
    for user in host.users:
        assert host.serving(user) == "0.0.41"
    assert not (host.state_dir / "journal.json").exists()
    assert host.state()["current"] == "0.0.41"  # managed now, so the next night can roll back to it


def test_adopt_refuses_when_t3track_already_manages_the_host(host):
    before = os.readlink(host.root / "current")
    result = host.t3track("adopt", "0.0.42")
    assert result.returncode == 2
    assert "already manages" in result.stderr and "t3track pin" in result.stderr
    assert os.readlink(host.root / "current") == before



def test_an_adopt_killed_while_rolling_back_is_recovered_and_the_hand_made_version_managed(host):
    import signal

    from tests.support.host import nightly

    handmade_041(host)
    host.publish("0.0.43", fault="no-cookie-live", tag=None)
    killed = host.t3track("adopt", "0.0.43", env={"T3TRACK_FAULT_KILL_AT": "rolling_back"})
    assert killed.returncode == -signal.SIGKILL
    recovering = host.t3track("run", "--json")          # the next night recovers the adopt first
    assert json.loads(recovering.stdout)["recovered"].startswith("rolled_back"), recovering.stderr
    assert host.current_target() == "versions/0.0.41"
    assert host.state()["current"] == "0.0.41"
    assert not any(d["version"] == "0.0.43" for d in host.state()["denied"])  # the operator's call, not a nightly's

    # so a nightly failing live later can be rolled back to it
    assert host.t3track("backup").returncode == 0
    host.publish(nightly(1), fault="no-cookie-live")
    night = host.t3track("run", "--json")
    doc = json.loads(night.stdout)
    assert (night.returncode, doc["outcome"], doc["from"]) == (1, "rolled_back", "0.0.41"), doc["reason"]


def test_an_adopt_killed_right_after_moving_the_hand_made_tree_leaves_it_serving_and_retriable(host):
    import signal

    handmade_041(host)
    host.publish("0.0.43", fault="no-cookie-live", tag=None)
    killed = host.t3track("adopt", "0.0.43", env={"T3TRACK_FAULT_KILL_AT": "planned"})
    assert killed.returncode == -signal.SIGKILL
    assert host.current_target() == "versions/0.0.41"  # the move left a working layout
    again = host.t3track("adopt", "0.0.43", "--json")
    doc = json.loads(again.stdout)
    assert (again.returncode, doc["outcome"], doc["from"]) == (1, "rolled_back", "0.0.41"), again.stderr
    assert host.current_target() == "versions/0.0.41"


def test_a_night_before_the_first_adopt_installs_nothing_and_says_to_adopt(host):
    empty_root(host)
    host.publish("0.0.43-nightly.20261101.3001")
    night = host.t3track("run", "--json")
    doc = json.loads(night.stdout)
    assert (night.returncode, doc["outcome"]) == (0, "noop"), night.stderr
    assert "t3track adopt VERSION" in doc["reason"]
    assert not (host.root / "versions").exists() and not (host.root / "current").exists()
    assert [e["outcome"] for e in host.history() if e["event"] == "run"] == ["noop"]


def test_adopt_on_a_new_host_whose_users_have_no_state_yet_starts_them_and_checks_them_live(host):
    # A host nobody has served T3 on: empty base dirs (t3-provision-users.sh makes them), no database.
    empty_root(host)
    for user in host.users:
        shutil.rmtree(user.base_dir)
        user.base_dir.mkdir(mode=0o700)

    result = host.t3track("adopt", "0.0.42", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    doc = json.loads(result.stdout)
    assert doc["outcome"] == "swapped" and doc["from"] is None, doc["reason"]
    assert [g["outcome"] for g in doc["gates"]] == ["pass", "pass"]  # each live pairing handshake
    assert host.current_target() == "versions/0.0.42"
    for user in host.users:
        assert host.serving(user) == "0.0.42"
        assert emu.migration_ids(user.db) == list(range(1, 53))  # the server created its state
    assert "nothing to snapshot" in result.stderr
    state = host.state()
    assert state["current"] == "0.0.42" and state.get("frozen") is None
