"""An operator's moves on an emulated host: `revert --to` a denied or refused version is refused like
`pin` (exit 2, nothing touched); each command says what it denied, froze or replaced and how to undo
it; a second denial keeps the first's evidence; `pin` asks the registry."""

from __future__ import annotations

import json

import pytest
from tests.support.host import nightly, wait_for_version

pytestmark = pytest.mark.slow


def events(host, name):
    return [e for e in host.history() if e["event"] == name]


def assert_untouched(host, serving, pids, rows):
    assert host.current_target() == f"versions/{serving}" and host.state()["current"] == serving
    assert host.server_pids() == pids                               # nobody was stopped
    assert not (host.state_dir / "journal.json").exists()
    for user in host.users:
        assert wait_for_version(user.url, serving, timeout=20) == serving
        assert set(rows[user.name]) <= set(host.rows(user))


def test_revert_to_a_version_denied_by_live_verify_is_refused_like_pin(host):
    bad = nightly(1)
    host.publish(bad, migrations=53, fault="no-cookie-live")
    assert host.t3track("run").returncode == 1                      # failed live, rolled back, denied
    assert (host.root / "versions" / bad).is_dir()
    pids, rows = host.server_pids(), {u.name: host.rows(u) for u in host.users}
    done = host.t3track("revert", "--to", bad)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"{bad} is denied" in done.stderr and f"next: t3track allow {bad}" in done.stderr
    assert_untouched(host, "0.0.42", pids, rows)
    assert events(host, "revert") == []
    pinned = host.t3track("pin", bad, "--reason", "x")                # the same answer as pin's
    assert pinned.returncode == 2 and f"t3track allow {bad}" in pinned.stderr


def test_revert_to_a_version_the_gates_refused_is_refused_until_allowed(host):
    refused = nightly(1)
    host.publish(refused, fault="no-cookie")
    assert host.t3track("run").returncode == 1                      # a gate failed: counted, not denied yet
    state = host.state()
    assert state["failures"].get(refused) == 1 and not any(d["version"] == refused for d in state["denied"])
    if not (host.root / "versions" / refused).is_dir():
        pytest.skip("the refused build was pruned")
    pids, rows = host.server_pids(), {u.name: host.rows(u) for u in host.users}
    done = host.t3track("revert", "--to", refused, "--json")
    assert done.returncode == 2
    doc = json.loads(done.stdout)
    assert "refused by the gates" in doc["error"] and doc["hint"].startswith(f"t3track allow {refused}")
    assert_untouched(host, "0.0.42", pids, rows)


def test_revert_says_it_denied_the_version_it_left_and_how_to_allow_it(host):
    v = nightly(1)
    host.publish(v)
    assert host.t3track("run").returncode == 0
    done = host.t3track("revert")
    assert done.returncode == 0, done.stderr
    assert f"denied {v} (the version this revert left; `t3track allow {v}`" in done.stdout
    assert any(d["version"] == v and d["gate"] == "revert" for d in host.state()["denied"])
    # going back there is refused until allowed
    again = host.t3track("revert")
    assert again.returncode == 2 and f"t3track allow {v}" in again.stderr
    assert host.current_target() == "versions/0.0.42"


def test_denying_an_already_denied_version_keeps_its_evidence_and_fingerprint(host):
    bad = nightly(1)
    host.publish(bad, fault="no-cookie-live")
    assert host.t3track("run").returncode == 1
    first = next(d for d in host.state()["denied"] if d["version"] == bad)
    assert first["gate"] == "live-verify" and first["evidence"]
    done = host.t3track("deny", bad, "--reason", "again, to be sure")
    assert done.returncode == 0, done.stderr
    assert "already denied" in done.stdout and "kept" in done.stdout and f"undo: t3track allow {bad}" in done.stdout
    assert next(d for d in host.state()["denied"] if d["version"] == bad) == first
    assert events(host, "deny")[-1]["reason"] == "again, to be sure"  # the operator's word is in history


def test_pin_of_a_version_the_registry_does_not_have_is_refused(host):
    done = host.t3track("pin", "9.9.9", "--reason", "typo")
    assert done.returncode == 2
    assert "9.9.9 is not in the registry" in done.stderr
    assert "pinned" not in host.state() or host.state()["pinned"] is None
    assert events(host, "pin") == []


def test_pin_of_an_older_version_says_the_next_run_downgrades(host):
    host.publish("0.0.41", tag=None)
    done = host.t3track("pin", "0.0.41", "--reason", "known good")
    assert done.returncode == 0, done.stderr
    assert "older than current 0.0.42: the next `t3track run` downgrades" in done.stderr
    assert "undo: t3track unpin" in done.stdout
