"""Drift (t3code-contract.md, "Upstream's own updater"): a user who runs `t3 update` or `t3 service
install`, or starts a server by hand, serves a version that is not `current`. status shows each
user's live serverVersion next to what t3track installed; a night that finds drift says so in its
report and notification and does not count it as the candidate's failure; config check warns about
T3's own service and runtime dir."""

from __future__ import annotations

import json
import sys

import pytest
from tests.emulator import package as emu
from tests.support.host import nightly, wait_for_version

pytestmark = pytest.mark.slow

UPDATED = "0.0.45"   # what upstream's own `t3 update` put there: the stable of the day (contract)


@pytest.fixture
def drifted(host, tmp_path):
    """alice's service stopped and a server of another version started by hand on her port."""
    alice = host.user("alice")
    host.service("stop", alice)
    exe = emu.make_install(tmp_path / "t3-runtime" / UPDATED, UPDATED)
    server = emu.start_server(exe, alice.base_dir, port=alice.port)
    wait_for_version(alice.url, UPDATED, timeout=15)
    yield host
    server.stop()


def test_status_shows_each_users_live_version_beside_current(host):
    doc = json.loads(host.t3track("--json", "status").stdout)
    assert doc["current"] == "0.0.42"
    assert [(u["name"], u["serving"], u["drift"]) for u in doc["users"]] == [("alice", "0.0.42", False),
                                                                           ("bob", "0.0.42", False)]
    assert not [w for w in doc["warnings"] if "serves" in w]


def test_status_names_a_drifted_user(drifted):
    doc = json.loads(drifted.t3track("--json", "status").stdout)
    alice, bob = doc["users"]
    assert (alice["serving"], alice["drift"]) == (UPDATED, True) and (bob["serving"], bob["drift"]) == ("0.0.42", False)
    warning = next(w for w in doc["warnings"] if w.startswith("alice:"))
    assert f"serves {UPDATED}, not 0.0.42 that t3track installed" in warning and "t3 update" in warning
    human = drifted.t3track("status").stdout
    assert f"{UPDATED} (DRIFT)" in human


def test_a_night_that_finds_drift_says_so_refuses_and_does_not_blame_the_candidate(drifted, tmp_path):
    told = tmp_path / "told.jsonl"
    script = f"import sys; open({str(told)!r}, 'a').write(sys.stdin.read() + '\\n')"
    drifted.write_config(notify={"command": [sys.executable, "-c", script]})
    v = nightly(1)
    drifted.publish(v, migrations=53)
    result = drifted.t3track("run", "--json")
    doc = json.loads(result.stdout)
    assert result.returncode == 1 and doc["outcome"] == "refused", result.stdout + result.stderr
    assert doc["reason"].startswith(f"drift: alice: {drifted.user('alice').url} serves {UPDATED}")
    assert [(g["name"], g["user"], g["outcome"]) for g in doc["gates"]] == [("drift", "alice", "fail")]
    state = drifted.state()
    assert v not in state.get("failures", {}) and not state["denied"]     # not the candidate's failure
    assert drifted.current_target() == "versions/0.0.42"
    notification = json.loads(told.read_text().splitlines()[0])
    assert notification["event"] == "refused" and "drift" in notification["reason"] and UPDATED in notification["reason"]
    assert drifted.serving(drifted.user("alice")) == UPDATED               # nothing acted around it


def test_config_check_warns_about_t3s_own_updater_and_service(host):
    alice = host.user("alice")
    home = alice.base_dir.parent
    (alice.base_dir / "runtime" / "versions" / UPDATED).mkdir(parents=True)
    (home / ".config" / "systemd" / "user").mkdir(parents=True)
    (home / ".config" / "systemd" / "user" / "t3code.service").write_text("[Service]\nExecStart=t3 serve\n")
    (home / ".local" / "bin").mkdir(parents=True)
    (home / ".local" / "bin" / "t3").symlink_to(alice.base_dir / "runtime" / "versions" / UPDATED / "t3")
    doc = json.loads(host.t3track("--json", "config", "check").stdout)
    warnings = [w for w in doc["warnings"] if w.startswith("users[0] (alice)")]
    assert len(warnings) == 3, doc
    assert any("runtime/versions" in w and "t3 update" in w for w in warnings)
    assert any("t3code.service" in w and "t3 service install" in w for w in warnings)
    assert any(".local/bin/t3" in w for w in warnings)
    assert not [w for w in doc["warnings"] if "(bob)" in w]


def test_a_quiet_night_that_finds_drift_tells_it_once(drifted, tmp_path):
    told = tmp_path / "told.jsonl"
    script = f"import sys; open({str(told)!r}, 'a').write(sys.stdin.read() + '\\n')"
    drifted.write_config(notify={"command": [sys.executable, "-c", script]})
    assert drifted.t3track("freeze", "--reason", "holiday").returncode == 0
    result = drifted.t3track("run", "--json")                 # frozen: a quiet night
    doc = json.loads(result.stdout)
    assert result.returncode == 0 and doc["outcome"] == "noop", result.stdout + result.stderr
    assert [(g["name"], g["user"], g["outcome"]) for g in doc["gates"]] == [("drift", "alice", "inconclusive")]
    assert any(f"serves {UPDATED}, not 0.0.42" in n for n in doc["notes"])
    notices = [json.loads(line) for line in told.read_text().splitlines() if line.strip()]
    assert [(n["event"], n["user"]) for n in notices] == [("drift", "alice")] and UPDATED in notices[0]["reason"]
    assert drifted.t3track("run").returncode == 0
    assert len([line for line in told.read_text().splitlines() if line.strip()]) == 1   # once, not every night
