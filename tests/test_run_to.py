"""`t3track run --to VERSION [--allow-downgrade]` on an emulated host: one night that takes exactly
VERSION through install, every gate, the swap and the live check, whatever the channel says."""

import json

import pytest
from tests.support.host import nightly

pytestmark = pytest.mark.slow


def last_run(host):
    return next(e for e in reversed(host.history()) if e["event"] == "run")


def test_to_takes_the_named_version_although_the_channel_points_at_a_newer_one(host):
    wanted, tagged = nightly(1), nightly(2)
    host.publish(wanted, migrations=53)
    host.publish(tagged)
    result = host.t3track("run", "--to", wanted, "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["outcome"] == "swapped" and doc["to"] == wanted and doc["requested"] == wanted
    assert {g["name"] for g in doc["gates"]} >= {"backup-present", "sandbox-serve", "pairing-probe", "live-verify"}
    assert host.current_target() == f"versions/{wanted}"
    assert all(host.serving(u) == wanted for u in host.users)
    state = host.state()
    assert state["current"] == wanted and state["previous"] == "0.0.42"
    run = last_run(host)
    assert run["requested"] == wanted and run["outcome"] == "swapped" and run["to"] == wanted
    assert not (host.root / "versions" / tagged).exists()  # the channel's version was never installed


def test_to_an_older_version_is_refused_and_taken_only_with_allow_downgrade(host):
    older = "0.0.41"
    host.publish(older, tag=None)
    refused = host.t3track("run", "--to", older, "--json")
    assert refused.returncode == 1
    doc = json.loads(refused.stdout)
    assert doc["outcome"] == "refused" and "--allow-downgrade" in doc["reason"]
    assert host.current_target() == "versions/0.0.42"
    assert last_run(host)["requested"] == older and last_run(host)["outcome"] == "refused"

    taken = host.t3track("run", "--to", older, "--allow-downgrade", "--json")
    assert taken.returncode == 0, taken.stderr
    assert json.loads(taken.stdout)["outcome"] == "swapped"
    assert host.current_target() == f"versions/{older}"
    assert all(host.serving(u) == older for u in host.users)
    assert host.state()["current"] == older and host.state()["previous"] == "0.0.42"


def test_to_a_denied_version_is_refused_and_a_malformed_one_changes_nothing(host):
    v = nightly(1)
    host.publish(v)
    assert host.t3track("deny", v, "--reason", "canary h1 rolled it back").returncode == 0
    refused = host.t3track("run", "--to", v, "--json")
    assert refused.returncode == 1
    assert "denied" in json.loads(refused.stdout)["reason"]
    assert host.current_target() == "versions/0.0.42"
    assert not (host.root / "versions" / v).exists()
    assert last_run(host)["requested"] == v and last_run(host)["outcome"] == "refused"

    runs_before = len([e for e in host.history() if e["event"] == "run"])
    assert host.t3track("run", "--to", "latest").returncode == 2
    assert host.t3track("run", "--allow-downgrade").returncode == 2
    assert len([e for e in host.history() if e["event"] == "run"]) == runs_before


def test_to_a_version_that_fails_live_is_rolled_back_and_denied(host):
    v = nightly(1)
    host.publish(v, fault="no-cookie-live")
    result = host.t3track("run", "--to", v, "--json")
    assert result.returncode == 1, result.stderr
    assert json.loads(result.stdout)["outcome"] == "rolled_back"
    assert host.current_target() == "versions/0.0.42"
    assert all(host.serving(u) == "0.0.42" for u in host.users)
    denial = next(d for d in host.state()["denied"] if d["version"] == v)
    assert denial["gate"] == "live-verify"
    assert last_run(host)["requested"] == v and last_run(host)["outcome"] == "rolled_back"
