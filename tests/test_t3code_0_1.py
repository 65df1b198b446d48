"""T3 Code 0.1.x as the contract knows it ("T3 Code 0.1.x"), end to end on the emulated host.

0.1.x refuses to start when the host's state says another owner, a user's own T3 service or
an interrupted update of upstream's updater manages the T3 home (t3code-contract.md, "T3 Code 0.1.x").
That is the host's problem: exit 3, the candidate neither denied nor counted, the old version serving."""

import json

import pytest
from tests.support.host import nightly

pytestmark = pytest.mark.slow

REFUSALS = {"refuse-owned": "A T3 Code server already owns",
            "refuse-service": "A background service for this T3 home",
            "refuse-update-pending": "An interrupted server update requires recovery"}


@pytest.mark.parametrize("fault", sorted(REFUSALS))
def test_a_refusal_in_the_sandbox_is_the_hosts_problem_exit_3(host, fault):
    v = nightly(1, base="0.1.11")
    host.publish(v, fault=fault)
    pids = host.server_pids()
    result = host.t3track("run", "--json")
    assert result.returncode == 3, result.stdout + result.stderr
    doc = json.loads(result.stdout)
    assert doc["outcome"] == "error" and REFUSALS[fault] in doc["reason"]
    state = host.state()
    assert v not in state["failures"] and not state["denied"] and state["current"] == "0.0.42"
    assert host.server_pids() == pids and host.current_target() == "versions/0.0.42"


def test_a_refusal_at_the_live_start_rolls_back_without_denying_and_exits_3(host):
    v = nightly(1, base="0.1.11")
    host.publish(v, fault="refuse-update-pending-live")  # passes the sandbox, refused live
    host.write_config(services={"logs": ["tail", "-n", "50", str(host.run_dir / "{user}.log")]},
                      verify_timeout="5s")
    result = host.t3track("run", "--json")
    assert result.returncode == 3, result.stdout + result.stderr
    doc = json.loads(result.stdout)
    assert doc["outcome"] == "error" and "An interrupted server update requires recovery" in doc["reason"]
    assert host.current_target() == "versions/0.0.42"
    for user in host.users:
        assert host.serving(user) == "0.0.42"
    state = host.state()
    assert v not in state["failures"] and not state["denied"] and state["current"] == "0.0.42"
    assert not (host.state_dir / "journal.json").exists()


def test_a_swap_that_changes_the_orchestration_protocol_records_it_and_says_so(host):
    v = nightly(1, base="0.1.11")
    host.publish(v, protocol_version=2)
    result = host.t3track("run", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    doc = json.loads(result.stdout)
    assert doc["outcome"] == "swapped"
    live = [g for g in doc["gates"] if g["name"] == "live-verify"]
    assert {g["user"]: g["protocol"] for g in live} == {"alice": 2, "bob": 2}
    assert any("orchestration protocol changed 1 -> 2" in note and "alice, bob" in note for note in doc["notes"])
    run = next(e for e in reversed(host.history()) if e["event"] == "run")
    assert run["protocol"] == {"alice": 2, "bob": 2}
