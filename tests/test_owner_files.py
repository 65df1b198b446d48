"""The lock and owner files of newer builds survive every snapshot, restore and rollback untouched
(t3code-contract.md, "T3 Code 0.1.x": `server-owner.sqlite`, `server-owner.json`, `server-cli.sqlite`,
`server-launcher.sqlite`; upstream: never replace the lock file, also not in a rollback)."""

import hashlib
import json
import sqlite3

import pytest
from tests.support.host import build_host, nightly

pytestmark = pytest.mark.slow

OWNER_FILES = ("server-owner.sqlite", "server-owner.json", "server-cli.sqlite", "server-launcher.sqlite")
LOCKING = {"ownership_lock": True}


@pytest.fixture
def host(tmp_path):
    h = build_host(tmp_path / "host", current_settings=LOCKING)
    yield h
    h.close()


def seed_owner_files(user) -> None:
    """Each file with content of its own, as a 0.1.x server and its launcher would leave them."""
    userdata = user.base_dir / "userdata"
    for name in ("server-cli.sqlite", "server-launcher.sqlite"):
        with sqlite3.connect(userdata / name) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS marker (who TEXT)")
            conn.execute("INSERT INTO marker VALUES (?)", (f"{user.name}:{name}",))
        conn.close()
    with sqlite3.connect(userdata / "server-owner.sqlite", timeout=5) as conn:  # the live server holds it
        conn.execute("SELECT 1").fetchall()
    conn.close()
    (userdata / "server-owner.json").write_text(json.dumps({"ownerId": f"owner-{user.name}", "pid": 1}))


def fingerprint(user) -> dict[str, tuple[str, int]]:
    userdata = user.base_dir / "userdata"
    return {name: (hashlib.sha256((userdata / name).read_bytes()).hexdigest(), (userdata / name).stat().st_ino)
            for name in OWNER_FILES}


def test_a_rollback_that_restores_the_databases_leaves_the_owner_files_byte_identical(host):
    for user in host.users:
        seed_owner_files(user)
    assert host.t3track("backup").returncode == 0
    before = {user.name: fingerprint(user) for user in host.users}
    v = nightly(1)
    host.publish(v, migrations=53, **LOCKING)
    assert host.t3track("dry-run").returncode == 0
    host.set_fault(v, "no-cookie-live")  # fails only live: stop, snapshot, flip, start, roll back, restore
    result = host.t3track("run", "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    doc = json.loads(result.stdout)
    assert doc["outcome"] == "rolled_back"
    for user in host.users:
        assert host.max_migration(user) == 52  # the databases were restored
        assert fingerprint(user) == before[user.name]  # the owner files were not: same bytes, same inodes
    snapshots = host.state_dir / "snapshots"
    assert not [p for p in snapshots.rglob("*") if p.name in OWNER_FILES]  # and never copied into a snapshot


def test_revert_restore_state_leaves_the_owner_files_byte_identical(host):
    for user in host.users:
        seed_owner_files(user)
    assert host.t3track("backup").returncode == 0
    v = nightly(1)
    host.publish(v, migrations=53, **LOCKING)
    assert host.t3track("run").returncode == 0
    before = {user.name: fingerprint(user) for user in host.users}
    result = host.t3track("revert", "--restore-state", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    for user in host.users:
        assert host.max_migration(user) == 52
        assert fingerprint(user) == before[user.name]
