"""Adding a user never silently changes the others: on an emulated host provisioned in a staged root,
`t3-provision-users.sh carol:3775` keeps alice's and bob's trees writable to t3track's sandboxed
units, and `t3track config check` warns when a user's tree is not (the drop-in the script wrote
before it read the config: carol alone)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from tests.support.host import REPO, build_host, nightly, wait_for_version

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("systemctl") is None, reason="needs systemctl (for --root enable)")]

PROVISION = REPO / "systemd" / "t3-provision-users.sh"


@pytest.fixture
def host(tmp_path):
    h = build_host(tmp_path / "host", users=("alice", "bob"))
    assert h.t3track("backup").returncode == 0
    yield h
    h.close()


def staged_root(tmp_path, host):
    root = tmp_path / "staged"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("alice:x:1001:1001::/home/alice:/bin/bash\n"
                                     "bob:x:1002:1002::/home/bob:/bin/bash\n"
                                     "carol:x:1003:1003::/home/carol:/bin/bash\n")
    return root


def provision(root, host, *users: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(PROVISION), "--root", str(root), "--config", str(host.config_path), *users],
                          capture_output=True, text=True, timeout=60)


def config_check(host, root) -> dict:
    done = host.t3track("--json", "config", "check", env={"T3TRACK_UNITS_DIR": str(root / "etc/systemd/system")})
    return json.loads(done.stdout)


def read_only_warnings(doc: dict) -> set[str]:
    return {w.split("'", 1)[0] for w in doc["warnings"] if "is read-only to" in w}


def test_adding_carol_alone_keeps_alice_and_bob_writable_and_every_night_goes_on(tmp_path, host):
    root = staged_root(tmp_path, host)
    rows = {u.name: host.rows(u) for u in host.users}
    added = provision(root, host, "carol:3775")
    assert added.returncode == 0, added.stderr
    assert "keep: alice bob" in added.stdout
    dropin = (root / "etc/systemd/system/t3track.service.d/50-t3-users.conf").read_text()
    for user in host.users:
        assert f"-{user.base_dir}" in dropin                     # alice and bob are still writable
    assert "-/home/carol/.t3" in dropin
    assert read_only_warnings(config_check(host, root)) == set()

    # the host itself goes on: a night swaps and every user keeps every row
    v = nightly(1)
    host.publish(v)
    assert host.t3track("run").returncode == 0
    for user in host.users:
        assert wait_for_version(user.url, v, timeout=20) == v
        assert set(rows[user.name]) <= set(host.rows(user))
    assert not (host.state_dir / "journal.json").exists()
    assert [e["outcome"] for e in host.history() if e["event"] == "run"] == ["swapped"]


def test_config_check_warns_when_a_users_tree_is_read_only_to_the_units_that_write_it(tmp_path, host):
    root = staged_root(tmp_path, host)
    for unit in ("t3track.service", "t3-backup-state.service"):   # what the old script left: carol alone
        (root / f"etc/systemd/system/{unit}.d").mkdir(parents=True)
        (root / f"etc/systemd/system/{unit}").write_text("[Service]\nReadWritePaths=-/opt/t3 -/var/lib/t3track\n")
        (root / f"etc/systemd/system/{unit}.d/50-t3-users.conf").write_text(
            "[Service]\nReadWritePaths=-/home/carol/.t3\n")
    doc = config_check(host, root)
    warned = [w for w in doc["warnings"] if "is read-only to" in w]
    assert len(warned) == 4                                        # alice and bob, for both units
    assert all("t3-provision-users.sh with every user" in w for w in warned)
    assert {w.split("'")[0] for w in warned} == {"alice", "bob"}
