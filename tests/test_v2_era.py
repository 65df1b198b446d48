"""t3track on each kind of host of T3 Code's V2 era (t3code-contract.md, "Since 0.0.42"): a V1 host
(state.sqlite), a V1 host crossing to a V2 build, a V2 host (statev2.sqlite beside a frozen
state.sqlite) and a host first installed on a V2 build (statev2.sqlite only). Each goes through
config check, backup, backup-present, the sandbox, the swap's snapshot, the migrated test, the
restore of a rollback, revert's warning and status: a whole night on real emulator servers."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from tests.emulator import package as emu
from tests.support.host import Host, build_host, nightly

pytestmark = pytest.mark.slow

V2_CURRENT = "0.0.46-nightly.20261003.2610"   # the first V2 build (contract)
V2 = {"database": "statev2"}
KINDS = ("v1", "v2", "v2-only")


def v2_nightly(n: int) -> str:
    return nightly(n, base="0.0.46", day=20261010)


def make_host(directory: Path, kind: str, users: tuple[str, ...] = ("alice",)) -> Host:
    if kind == "v1":
        return build_host(directory, users=users)
    if kind == "v2":  # was V1 at 52; the current V2 build imported state.sqlite on its first start
        return build_host(directory, users=users, current=V2_CURRENT, current_migrations=55, current_settings=V2,
                          make_state=lambda base: emu.make_user_state(base, migrations=52, rows=0))
    return build_host(directory, users=users, current=V2_CURRENT, current_migrations=55, current_settings=V2,
                      make_state=lambda base: emu.make_user_state(base, migrations=55, rows=0, database="statev2"))


def candidate(kind: str, n: int = 1) -> str:
    """A V2 nightly for every kind: on a V1 host it is the crossing."""
    return nightly(n) if kind == "v1" else v2_nightly(n)


@pytest.fixture(params=KINDS)
def kind(request) -> str:
    return request.param


@pytest.fixture
def v2host(tmp_path: Path, kind: str):
    host = make_host(tmp_path / "host", kind)
    assert host.t3track("backup").returncode == 0
    yield host
    host.close()


def pairs(db: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return [(r[0], r[1]) for r in conn.execute("SELECT migration_id, name FROM effect_sql_migrations ORDER BY 1")]


def rows(db: Path) -> list[tuple]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute(f"SELECT * FROM {emu.ROWS_TABLE} ORDER BY 1").fetchall()


def databases(base_dir: Path) -> dict[str, tuple[list, list]]:
    """Each database file of a user with its migrations and rows."""
    userdata = base_dir / "userdata"
    return {name: (pairs(userdata / name), rows(userdata / name))
            for name in ("state.sqlite", "statev2.sqlite") if (userdata / name).is_file()}


def test_the_kinds_of_host_are_what_they_claim(tmp_path):
    v1 = make_host(tmp_path / "v1", "v1")
    v2 = make_host(tmp_path / "v2", "v2")
    only = make_host(tmp_path / "only", "v2-only")
    try:
        assert set(databases(v1.users[0].base_dir)) == {"state.sqlite"}
        assert set(databases(v2.users[0].base_dir)) == {"state.sqlite", "statev2.sqlite"}
        assert set(databases(only.users[0].base_dir)) == {"statev2.sqlite"}
        assert pairs(v2.users[0].db)[-1][0] == 55 and pairs(v2.users[0].base_dir / "userdata" / "state.sqlite")[-1][0] == 52
    finally:
        for host in (v1, v2, only):
            host.close()


def test_config_check_accepts_the_database_the_server_uses(v2host):
    result = v2host.t3track("--json", "config", "check")
    problems = json.loads(result.stdout)["problems"]
    assert not [p for p in problems if "state.sqlite" in p], problems


def test_a_backup_holds_every_database_of_the_user(v2host, kind):
    user = v2host.users[0]
    newest = sorted(p for p in (v2host.backup_dir / user.name).iterdir() if not p.name.startswith("."))[-1]
    manifest = json.loads((newest / "manifest.json").read_text())
    assert set(manifest["files"]) == set(databases(user.base_dir))
    for name, (migrations, data) in databases(user.base_dir).items():
        assert pairs(newest / name) == migrations and rows(newest / name) == data


def test_a_whole_night_swaps_and_a_live_failure_restores_the_pre_swap_state_exactly(v2host, kind):
    user = v2host.users[0]
    current = v2host.state()["current"]
    bad, good = candidate(kind, 1), candidate(kind, 2)
    v2host.publish(bad, migrations=57, **V2)
    assert v2host.t3track("dry-run").returncode == 0          # installs it; passes every gate in the sandbox
    emu.add_rows(user.db, 3, "before-swap")
    before = databases(user.base_dir)
    v2host.set_fault(bad, "no-cookie-live")
    result = v2host.t3track("run", "--json")
    doc = json.loads(result.stdout)
    assert result.returncode == 1 and doc["outcome"] == "rolled_back", result.stdout + result.stderr
    sandbox = next(g for g in doc["gates"] if g["name"] == "sandbox-serve")
    assert sandbox["outcome"] == "pass" and "57_EmulatedNightlyChange57" in sandbox["detail"]
    assert v2host.serving(user) == current
    assert databases(user.base_dir) == before                   # exactly the pre-swap state, every file
    userdata = user.base_dir / "userdata"
    if kind == "v1":                                            # rolled back across the V2 crossing
        assert not (userdata / "statev2.sqlite").exists()
        assert list(userdata.glob("statev2.sqlite.before-restore-*"))   # moved aside, never deleted

    v2host.publish(good, migrations=57, **V2)
    emu.add_rows(user.db, 2, "after-rollback")
    kept = rows(user.db)
    result = v2host.t3track("run", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert v2host.serving(user) == good
    assert pairs(userdata / "statev2.sqlite")[-1] == (57, "EmulatedNightlyChange57")
    assert rows(userdata / "statev2.sqlite") == kept            # the V2 build serves every row
    if "state.sqlite" in before:
        assert databases(user.base_dir)["state.sqlite"][0] == pairs(userdata / "state.sqlite")  # frozen, not migrated


def test_the_sandbox_says_when_a_candidate_moves_the_database_to_statev2(tmp_path):
    host = make_host(tmp_path / "host", "v1")
    try:
        assert host.t3track("backup").returncode == 0
        host.publish(nightly(1), migrations=53, **V2)
        doc = json.loads(host.t3track("dry-run", "--json").stdout)
        sandbox = next(g for g in doc["gates"] if g["name"] == "sandbox-serve")
        assert "statev2.sqlite" in sandbox["detail"] and "53_EmulatedNightlyChange53" in sandbox["detail"], sandbox
    finally:
        host.close()


def test_revert_warns_when_statev2_moved_forward_between_v2_builds(tmp_path):
    host = make_host(tmp_path / "host", "v2")
    try:
        assert host.t3track("backup").returncode == 0
        host.publish(v2_nightly(1), migrations=57, **V2)
        assert host.t3track("run").returncode == 0
        result = host.t3track("revert", "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        notes = " ".join(json.loads(result.stdout)["notes"])
        assert "statev2.sqlite" in notes and "56_EmulatedNightlyChange56" in notes and "--restore-state" in notes
    finally:
        host.close()


def test_revert_across_the_v2_crossing_warns_that_the_old_version_reads_frozen_data(tmp_path):
    host = make_host(tmp_path / "host", "v1")
    try:
        assert host.t3track("backup").returncode == 0
        host.publish(nightly(1), migrations=53, **V2)
        assert host.t3track("run").returncode == 0
        result = host.t3track("revert", "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        notes = " ".join(json.loads(result.stdout)["notes"])
        assert "statev2.sqlite" in notes and "0.0.42 reads state.sqlite" in notes
    finally:
        host.close()


def test_status_names_the_database_each_user_is_on(v2host, kind):
    doc = json.loads(v2host.t3track("--json", "status").stdout)
    user = doc["users"][0]
    expected = "state.sqlite" if kind == "v1" else "statev2.sqlite"
    assert user["database"] == expected and user["migration"] == (52 if kind == "v1" else 55)
    assert user["backup_age_s"] is not None
