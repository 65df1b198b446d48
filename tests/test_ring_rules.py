"""Rings without servers: the config's rules, what a ring's view of the state reads and writes, the
soak rule, the links, pruning. The nights themselves are in tests/test_rings.py."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from t3track.config import parse_config
from t3track.errors import ConfigError
from t3track.host import install, tree
from t3track.night import rings
from t3track.night.rings import RingStore
from t3track.state import Denial, Freeze, Pin, RingState, Served, State, StateStore

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
V1, V2, V3 = "0.0.43-nightly.20261101.3001", "0.0.43-nightly.20261102.3002", "0.0.43-nightly.20261103.3003"


def config(tmp_path: Path, rings_: list | None = None, users: tuple[str, ...] = ("alice", "bob", "carol")):
    data = {"root": str(tmp_path / "root"), "state_dir": str(tmp_path / "state"),
            "users": [{"name": u, "base_dir": str(tmp_path / u), "port": 4000 + i} for i, u in enumerate(users)]}
    if rings_ is not None:
        data["rings"] = rings_
    return parse_config(data)


TWO = [{"name": "canary", "users": ["alice"]}, {"name": "everyone", "users": ["bob", "carol"], "soak": "24h"}]


@pytest.mark.parametrize(("rings_", "problem"), [
    ([{"name": "a", "users": ["alice", "bob"]}, {"name": "b", "users": ["bob", "carol"]}], "bob is in both a and b"),
    ([{"name": "a", "users": ["alice"]}, {"name": "b", "users": ["bob"]}], "carol in no ring"),
    ([{"name": "a", "users": ["alice", "bob", "carol", "dave"]}], "names 'dave', which is not in users"),
    ([{"name": "a", "users": ["alice"], "soak": "1h"}, {"name": "b", "users": ["bob", "carol"]}],
     "the first ring (a) follows the channel"),
    ([{"name": "a", "users": ["alice"]}, {"name": "a", "users": ["bob", "carol"]}], "a ring name is listed twice"),
    ([{"name": "Bad Name", "users": ["alice", "bob", "carol"]}], "must be a short name"),
    ([{"name": "a", "users": []}, {"name": "b", "users": ["alice", "bob", "carol"]}], "rings[0].users"),
    ([], "rings"),
])
def test_every_user_is_in_exactly_one_known_ring(tmp_path, rings_, problem):
    with pytest.raises(ConfigError) as caught:
        config(tmp_path, rings_)
    assert any(problem in line for line in caught.value.problems), caught.value.problems


def test_without_rings_there_is_one_ring_of_every_user_on_root_current(tmp_path):
    c = config(tmp_path)
    assert not c.ringed and c.ring_names() == ["all"] and c.ring is None
    assert tree.current_link(c) == c.root / "current"
    view = config(tmp_path, TWO).ring_view("everyone")
    assert [u.name for u in view.users] == ["bob", "carol"] and view.ring == "everyone"
    assert tree.current_link(view) == view.root / "rings" / "everyone"
    assert [u.name for u in view.ring_view("canary").users] == ["alice"]  # a view of a view: from the host


def test_a_rings_view_of_the_state_reads_and_writes_its_own_fields_and_shares_the_rest(tmp_path):
    store = StateStore(tmp_path / "state")
    store.save(State(current=V2, previous=V1, rings={"everyone": RingState(current=V1, previous="0.0.42")},
                     pinned=Pin(version=V2, reason="host", by="op", at=NOW)))
    ring = RingStore(store.dir, "everyone", first=False)
    view = ring.load()
    assert (view.current, view.previous, view.pinned) == (V1, "0.0.42", None)  # the host's pin: through the soak
    assert RingStore(store.dir, "canary", first=True).load().pinned.version == V2  # the first ring takes it
    view.current, view.previous = V2, V1
    view.failures[V3] = 1
    ring.save(view)
    whole = store.load()
    assert (whole.current, whole.previous) == (V2, V1)  # the first ring's untouched
    assert (whole.rings["everyone"].current, whole.rings["everyone"].previous) == (V2, V1)
    assert whole.failures == {V3: 1} and whole.pinned is not None  # shared fields written, the host's pin kept
    assert [s.version for s in whole.rings["everyone"].served] == [V2]  # a new stretch starts
    ring.record("run", outcome="swapped")
    assert store.history(1)[0]["ring"] == "everyone"


def test_a_freeze_a_move_sets_is_the_hosts_and_a_rings_own_freeze_is_lifted_in_the_ring(tmp_path):
    store = StateStore(tmp_path / "state")
    store.save(State(current=V1, rings={"canary": RingState(frozen=Freeze(reason="r", by="op", at=NOW))}))
    ring = RingStore(store.dir, "canary", first=True)
    view = ring.load()
    assert view.frozen is not None and view.frozen.reason == "r"
    view.frozen = None  # e.g. an expired freeze lifted by the policy
    ring.save(view)
    assert store.load().rings["canary"].frozen is None
    view = ring.load()
    view.frozen = Freeze(reason="t3track froze itself", by="t3track", at=NOW)  # a failed rollback
    ring.save(view)
    assert store.load().frozen is not None and store.load().rings["canary"].frozen is None


def served(*stretches: tuple[str, float, float | None]) -> list[Served]:
    """(version, hours ago it started, hours ago it ended or None)"""
    return [Served(version=v, since=NOW - timedelta(hours=a), until=NOW - timedelta(hours=b) if b is not None else None)
            for v, a, b in stretches]


def test_a_later_ring_takes_the_newest_version_that_soaked_never_a_denied_or_older_one(tmp_path):
    c = config(tmp_path, TWO)
    everyone = c.ring_config("everyone")
    state = State(current=V3, rings={"canary": RingState(served=served((V1, 60, 30), (V2, 30, 10), (V3, 10, None))),
                                     "everyone": RingState(current=V1)})
    got = rings.promotion(c, state, everyone, NOW)
    assert got.version is None and "has served canary for 10h0m of its 1d0h soak" in got.reason  # V2: 20h < 24h
    state.rings["canary"].served = served((V1, 90, 60), (V2, 60, 30), (V3, 30, None))
    assert rings.promotion(c, state, everyone, NOW).version == V3
    state.denied = [Denial(version=V3, reason="failed its live re-check", at=NOW)]
    assert rings.promotion(c, state, everyone, NOW).version == V2
    state.rings["everyone"].current = V2
    got = rings.promotion(c, state, everyone, NOW)
    assert got.version is None and "nothing newer than" in got.reason


def test_the_soaking_rings_are_those_a_later_ring_has_not_caught_up_with(tmp_path):
    c = config(tmp_path, TWO)
    assert rings.soaking(c, State(current=V2, rings={"everyone": RingState(current=V1)})) == ["canary"]
    assert rings.soaking(c, State(current=V2, rings={"everyone": RingState(current=V2)})) == []


def make_tree(c, *installed: str) -> None:
    for version in installed:
        (c.root / "versions" / version).mkdir(parents=True)
    (c.root / "current").symlink_to(Path("versions") / installed[0])


def test_a_single_link_host_gains_user_and_ring_links_and_a_ring_swap_flips_only_its_link(tmp_path):
    c = config(tmp_path, TWO)
    make_tree(c, V1, V2)
    made = tree.ensure_layout(c)
    assert "rings/everyone -> versions/" + V1 in " ".join(made)
    assert os.readlink(c.root / "users" / "alice") == "../current"
    assert os.readlink(c.root / "users" / "bob") == "../rings/everyone"
    assert tree.ensure_layout(c) == []  # idempotent
    tree.flip_current(c.ring_view("everyone"), V2)
    assert os.readlink(c.root / "rings" / "everyone") == f"../versions/{V2}"
    assert os.readlink(c.root / "current") == f"versions/{V1}"
    assert (tree.user_version(c, "alice"), tree.user_version(c, "bob")) == (V1, V2)
    assert tree.live_targets(c) == {V1, V2}


def test_pruning_keeps_what_a_later_ring_may_still_take(tmp_path):
    c = config(tmp_path, TWO)
    newer = [f"0.0.43-nightly.202611{d:02d}.30{d:02d}" for d in range(4, 9)]
    make_tree(c, newer[-1], V1, V2, V3, *newer[:-1])
    state = State(current=newer[-1], previous=newer[-2],
                  rings={"canary": RingState(served=served((V3, 90, 60), (newer[0], 60, None))),
                         "everyone": RingState(current=V2, previous=V1)})
    removed = install.prune(c.model_copy(update={"keep_versions": 0}), state)
    left = {p.name for p in (c.root / "versions").iterdir()}
    assert {V1, V2, V3, newer[0], newer[-1], newer[-2]} <= left, removed
    assert set(removed) == set(newer[1:-2])


def test_status_json_of_a_ringed_host_shows_each_ring(tmp_path):
    from t3track.commands.status import status

    c = config(tmp_path, TWO)
    make_tree(c, V1, V2)
    tree.ensure_layout(c)
    store = StateStore(c.state_dir)
    since = datetime.now(UTC) - timedelta(hours=5)
    store.save(State(current=V1, rings={"canary": RingState(served=[Served(version=V1, since=since)]),
                                        "everyone": RingState(current=V1)}))
    result = status(c, store)
    assert [(r.name, r.current, r.linked) for r in result.rings] == [("canary", V1, V1), ("everyone", V1, V1)]
    assert result.rings[0].soaked_s is not None and result.rings[0].soaked_s >= 5 * 3600 - 60
    assert "nothing newer" in (result.rings[1].next or "")
    assert {u.name: (u.ring, u.linked) for u in result.users} == {
        "alice": ("canary", V1), "bob": ("everyone", V1), "carol": ("everyone", V1)}


def test_a_journal_of_a_ring_the_config_no_longer_has_is_not_recovered_on_the_whole_host(tmp_path):
    from t3track.errors import CriticalError, UsageError

    store = StateStore(tmp_path / "state")
    with pytest.raises(CriticalError, match="no longer names that ring"):
        rings.scope(config(tmp_path), store, "everyone")
    with pytest.raises(CriticalError, match="no longer names that ring"):
        rings.scope(config(tmp_path, TWO), store, "gone")
    with pytest.raises(UsageError, match="no rings"):
        rings.for_operator(config(tmp_path), store, "all", "revert")
    with pytest.raises(UsageError, match="--ring"):
        rings.for_operator(config(tmp_path, TWO), store, None, "revert")


def test_the_hosts_pin_reaches_a_later_ring_only_after_it_soaked_and_a_soak_has_an_hours_slack(tmp_path):
    c = config(tmp_path, TWO)
    everyone = c.ring_config("everyone")
    state = State(current=V3, rings={"canary": RingState(served=served((V2, 60, 23.5), (V3, 23.5, None))),
                                     "everyone": RingState(current=V1)})
    assert rings.promotion(c, state, everyone, NOW).version == V3  # 23h30m of a 24h soak: the nightly timer's slack
    assert rings.promotion(c, state, everyone, NOW, only=V2).version == V2
    state.rings["canary"].served = served((V2, 60, 22), (V3, 22, None))
    assert rings.promotion(c, state, everyone, NOW).version == V2  # V3: 22h is short, V2 served 38h
    got = rings.promotion(c, state, everyone, NOW, only=V1)
    assert got.version is None and "pinned at" in got.reason
    assert rings.soak_slack(86400) == 3600 and rings.soak_slack(3600) == 150


def test_a_user_moved_to_a_ring_on_another_version_is_held_on_its_own_until_that_rings_swap(tmp_path):
    c = config(tmp_path, TWO)
    make_tree(c, V1, V2)
    tree.ensure_layout(c)
    tree.flip_current(c.ring_view("everyone"), V2)
    moved = config(tmp_path, [{"name": "canary", "users": ["alice", "bob"]}, {"name": "everyone", "users": ["carol"]}])
    assert tree.ensure_layout(moved) == [f"users/bob -> ../versions/{V2}"]
    assert tree.ensure_layout(moved) == []
    tree.flip_current(moved.ring_view("everyone"), V1)  # everyone's next swap no longer moves bob
    assert tree.user_version(moved, "bob") == V2
    tree.flip_current(moved.ring_view("canary"), V2)  # the canary's swap, bob's server stopped, re-links him
    assert os.readlink(c.root / "users" / "bob") == "../current"


def test_no_user_link_is_made_to_a_ring_link_that_is_not_there(tmp_path):
    c = config(tmp_path, TWO)
    (c.root / "versions").mkdir(parents=True)
    (c.root / "current").symlink_to("versions/handmade")  # not a version: no ring link can start from it
    tree.ensure_layout(c)
    assert not os.path.lexists(c.root / "users" / "bob") and not os.path.lexists(c.root / "rings" / "everyone")
    from t3track.commands.config_check import config_check

    warnings = config_check(c, tmp_path / "config.yaml").warnings
    assert any("users/bob is missing" in w for w in warnings), warnings
    (c.root / "users").mkdir()
    (c.root / "users" / "bob").symlink_to("../rings/everyone")
    problems = config_check(c, tmp_path / "config.yaml").problems
    assert any("users/bob is a dangling symlink (t3@bob.service cannot start)" in p for p in problems)


def test_pruning_from_a_later_rings_move_keeps_the_first_rings_previous(tmp_path):
    c = config(tmp_path, TWO)
    newer = [f"0.0.43-nightly.202611{d:02d}.30{d:02d}" for d in range(4, 9)]
    make_tree(c, newer[-1], V1, V2, *newer[:-1])
    whole = State(current=newer[-1], previous=V1, rings={"everyone": RingState(current=V2, previous=newer[0])})
    view = RingStore(c.state_dir, "everyone", first=False)
    StateStore(c.state_dir).save(whole)
    install.prune(c.model_copy(update={"keep_versions": 0}), view.load(), host=whole)
    left = {p.name for p in (c.root / "versions").iterdir()}
    assert {V1, V2, newer[0], newer[-1]} <= left



def test_config_check_warns_of_a_unit_that_does_not_start_through_the_users_link(tmp_path, monkeypatch):
    """A t3@.service still starting root/current/... (the layout before rings) would serve the old
    version after every move of the user's link. systemd's own answer is read (here a stand-in
    systemctl printing `systemctl show --property=ExecStart` as systemd 252 does); the real one is
    asked in tests/test_real_systemd.py."""
    from t3track.host import services

    c = config(tmp_path, TWO)
    shown = {"alice": c.root / "users" / "alice" / "node_modules/@t3code/t3-linux-x64/t3",
             "bob": c.root / "current" / "node_modules/@t3code/t3-linux-x64/t3"}
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = "\n".join(["#!/bin/sh", 'case "$4" in'] + [
        f'  t3@{user}.service) echo "ExecStart={{ path={path} ; argv[]={path} serve ; ignore_errors=no }}" ;;'
        for user, path in shown.items()] + ["  *) echo 'ExecStart=' ;;", "esac", ""])
    (bin_dir / "systemctl").write_text(script)
    (bin_dir / "systemctl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(services, "SYSTEMD_RUNNING", tmp_path)  # as if systemd were PID 1
    warnings = services.unit_layout_warnings(c)
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith(f"t3@bob.service starts {shown['bob']}, not through {c.root / 'users' / 'bob'}/")
    assert warnings[1].startswith("t3@carol.service has no ExecStart=")
    other = c.model_copy(update={"services": c.services.model_copy(update={"start": ["/usr/local/bin/start", "{user}"]})})
    assert services.unit_layout_warnings(other) == []  # not the shipped units: nothing to read
    monkeypatch.setattr(services, "SYSTEMD_RUNNING", tmp_path / "absent")
    assert services.unit_layout_warnings(c) == []  # no systemd running
