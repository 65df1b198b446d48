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


def runs(host):
    return [e for e in host.history() if e["event"] == "run"]


def metric(host, name):
    text = (host.state_dir / "metrics" / "t3track.prom").read_text()
    return next(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def test_to_an_older_version_is_a_usage_error_before_any_night_and_taken_only_with_allow_downgrade(host):
    older = "0.0.41"
    host.publish(older, tag=None)
    pids = host.server_pids()
    refused = host.t3track("run", "--to", older, "--json")
    assert refused.returncode == 2, refused.stderr
    doc = json.loads(refused.stdout)
    assert "older than current 0.0.42" in doc["error"] and "--allow-downgrade" in doc["hint"]
    assert host.current_target() == "versions/0.0.42" and host.server_pids() == pids
    assert runs(host) == [] and "last_run" not in host.state()    # no night was recorded: no alert

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
    assert refused.returncode == 2
    doc = json.loads(refused.stdout)
    assert "denied" in doc["error"] and doc["hint"].startswith(f"t3track allow {v}")
    assert host.current_target() == "versions/0.0.42"
    assert not (host.root / "versions" / v).exists()
    assert runs(host) == []

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
    run = last_run(host)
    assert run["requested"] == v and run["outcome"] == "rolled_back"
    assert run["by"] not in ("t3track", None)                  # the operator's move, under his name
    assert metric(host, "t3track_consecutive_refusals") == 0    # never the refusal streak the alerts read


def test_to_a_version_the_registry_does_not_have_is_a_usage_error_before_any_night(host):
    done = host.t3track("run", "--to", "9.9.9")
    assert done.returncode == 2, done.stderr
    assert "the registry has no t3@9.9.9" in done.stderr and "Traceback" not in done.stderr
    assert runs(host) == [] and host.current_target() == "versions/0.0.42"


def test_an_operators_run_to_is_recorded_as_his_and_a_typo_never_counts_as_a_refused_night(host):
    host.publish("0.0.41", tag=None)
    for _ in range(3):
        assert host.t3track("run", "--to", "0.0.41").returncode == 2
    v = nightly(1)
    host.publish(v)
    done = host.t3track("run", "--to", v, env={"SUDO_USER": "opsperson"})
    assert done.returncode == 0, done.stderr
    assert [(e["by"], e["outcome"]) for e in runs(host)] == [("opsperson", "swapped")]
    assert metric(host, "t3track_consecutive_refusals") == 0
