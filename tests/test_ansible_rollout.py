"""deploy/ansible/rollout.yml, run for real by ansible-core against emulated hosts on this machine.

Each host is its own emulated T3 host (tests/support/host.py): its own root, state_dir, config,
loopback registry and production servers; Ansible reaches it with `ansible_connection: local` and
runs the real `t3track` with that host's `t3track_config`. Each host has its own registry, so one
host can be handed a build that breaks only there (a `-live` fault: it passes every gate, then fails
its live check) and the channel can point elsewhere than the version the fleet is told to take.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tests.support.host import Host, build_host, nightly

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PLAYBOOK = REPO / "deploy" / "ansible" / "rollout.yml"
BIN = Path(sys.executable).with_name("t3track")
V = nightly(1)          # what the canary's channel offers tonight
LATER = nightly(2)      # what the other hosts' channels say by the time the rollout reaches them


class Fleet:
    def __init__(self, base: Path):
        self.base = base
        self.hosts: dict[str, Host] = {}

    def add(self, name: str) -> Host:
        host = build_host(self.base / name, users=("alice",))
        self.hosts[name] = host
        assert host.t3track("backup").returncode == 0
        return host

    def inventory(self, canary: list[str]) -> Path:
        host_vars = {name: {"t3track_config": str(h.config_path)} for name, h in self.hosts.items()}
        document = {"all": {
            "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                     "t3track_bin": str(BIN)},
            "children": {"t3_hosts": {"hosts": host_vars},
                         "t3_canary": {"hosts": {name: None for name in canary}}}}}
        path = self.base / "inventory.yml"
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        return path

    def rollout(self, canary: list[str], *extra: str) -> subprocess.CompletedProcess:
        home = self.base / "ansible"
        (home / "tmp").mkdir(parents=True, exist_ok=True)
        (home / "ansible.cfg").write_text("[defaults]\n")
        env = dict(os.environ, ANSIBLE_CONFIG=str(home / "ansible.cfg"), ANSIBLE_HOME=str(home),
                   ANSIBLE_LOCAL_TEMP=str(home / "tmp"), ANSIBLE_REMOTE_TEMP=str(home / "tmp"),
                   ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="0", ANSIBLE_DEPRECATION_WARNINGS="0",
                   LC_ALL="C.UTF-8")
        playbook = Path(sys.executable).with_name("ansible-playbook")
        return subprocess.run([str(playbook), "-i", str(self.inventory(canary)), str(PLAYBOOK), *extra],
                              capture_output=True, text=True, env=env, timeout=600)

    def close(self) -> None:
        for host in self.hosts.values():
            host.close()


@pytest.fixture
def fleet(tmp_path):
    f = Fleet(tmp_path)
    yield f
    f.close()


def runs(host: Host) -> list[dict]:
    return [e for e in host.history() if e["event"] == "run"]


def on(host: Host, version: str) -> bool:
    return (host.current_target() == f"versions/{version}" and host.state()["current"] == version
            and all(host.serving(u) == version for u in host.users))


def snapshot(host: Host) -> tuple:
    """Everything a touched host would show: the link, state.json, history, the installs."""
    return (host.current_target(), (host.state_dir / "state.json").read_text(), host.history(),
            sorted(p.name for p in (host.root / "versions").iterdir()))


def test_a_version_the_canary_swapped_in_reaches_every_host_in_waves(fleet):
    canary, a, b = fleet.add("h1"), fleet.add("h2"), fleet.add("h3")
    for host in (canary, a, b):
        host.publish(V, migrations=53)
    for host in (a, b):
        host.publish(LATER)  # their channel has moved on: they must still take exactly V
    started = time.monotonic()
    result = fleet.rollout(["h1"])
    wall = time.monotonic() - started
    print(f"rollout of {V} to 3 hosts: {wall:.1f}s wall")
    assert result.returncode == 0, result.stdout + result.stderr
    assert all(on(h, V) for h in (canary, a, b))
    assert "requested" not in runs(canary)[-1]  # the canary ran the ordinary gated night
    for host in (a, b):
        last = runs(host)[-1]
        assert last["requested"] == V and last["outcome"] == "swapped" and last["exit_code"] == 0
        assert not (host.root / "versions" / LATER).exists()
    assert "t3track rollout: h3 swapped" in result.stdout


def test_a_host_failing_its_live_check_mid_rollout_rolls_back_stops_the_rollout_and_a_rerun_resumes(fleet):
    canary, a, frozen, bad, after = (fleet.add(n) for n in ("h1", "h2", "h3", "h4", "h5"))
    for host in (canary, a, frozen, after):
        host.publish(V, migrations=53)
    bad.publish(V, migrations=53, fault="no-cookie-live")   # passes every gate there, fails live
    assert frozen.t3track("freeze", "--reason", "exam week on h3").returncode == 0
    frozen_before, after_before = snapshot(frozen), snapshot(after)

    result = fleet.rollout(["h1"])
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert on(canary, V) and on(a, V)
    # the frozen host was skipped and said so; nothing on it changed
    assert "h3 SKIPPED, frozen" in result.stdout and "exam week on h3" in result.stdout
    assert snapshot(frozen) == frozen_before
    # the failing host rolled back by itself and denied the version
    assert on(bad, "0.0.42")
    assert runs(bad)[-1]["outcome"] == "rolled_back" and runs(bad)[-1]["requested"] == V
    assert next(d for d in bad.state()["denied"] if d["version"] == V)["gate"] == "live-verify"
    assert "rollout stopped at h4" in out
    # the host after it was never touched
    assert snapshot(after) == after_before and on(after, "0.0.42") and not runs(after)

    # the operator fixes h4 and allows the version there; the same playbook resumes from h4: the
    # canary has nothing new and rolls out what it serves, h2 answers noop, h3 is still frozen
    bad.set_fault(V, None)
    assert bad.t3track("allow", V).returncode == 0
    again = fleet.rollout(["h1"])
    assert again.returncode == 0, again.stdout + again.stderr
    assert runs(canary)[-1]["outcome"] == "noop" and runs(a)[-1]["outcome"] == "noop"
    assert on(bad, V) and on(after, V) and runs(after)[-1]["requested"] == V
    assert snapshot(frozen) == frozen_before


def test_a_canary_that_rolls_back_gets_the_version_denied_on_every_host(fleet):
    canary, a, b = fleet.add("h1"), fleet.add("h2"), fleet.add("h3")
    canary.publish(V, fault="no-cookie-live")
    for host in (a, b):
        host.publish(V)
    result = fleet.rollout(["h1"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "canary h1 rolled_back" in result.stdout
    # the canary keeps its own denial, with the gate and the evidence
    assert next(d for d in canary.state()["denied"] if d["version"] == V)["gate"] == "live-verify"
    for host in (a, b):
        denial = next(d for d in host.state()["denied"] if d["version"] == V)
        assert "canary h1 rolled_back" in denial["reason"] and denial["by"] == "ansible-rollout"
        assert on(host, "0.0.42") and not runs(host)
        assert not (host.root / "versions" / V).exists()
        assert [e["event"] for e in host.history()][-1] == "deny"


def test_a_host_that_cannot_take_the_version_stops_the_rollout_saying_why_and_records_no_night(fleet):
    canary, denied, after = fleet.add("h1"), fleet.add("h2"), fleet.add("h3")
    for host in (canary, denied, after):
        host.publish(V, migrations=53)
    assert denied.t3track("deny", V, "--reason", "bad on h2's hardware").returncode == 0
    denied_before, after_before = snapshot(denied), snapshot(after)
    result = fleet.rollout(["h1"])
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert on(canary, V)
    # `run --to` a denied version is a usage error there: said, nothing run or recorded
    assert "rollout stopped at h2: error (exit 2)" in out and "bad on h2's hardware" in out
    assert snapshot(denied) == denied_before and on(denied, "0.0.42")
    assert snapshot(after) == after_before and not runs(after)
