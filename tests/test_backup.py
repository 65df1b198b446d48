"""Backups of each user's T3 state, the restore the sandbox and the rollback use, and the backup-present gate."""

import json
import os
import sqlite3
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from t3track import __version__
from t3track.cli import app
from t3track.config import parse_config
from t3track.errors import LockBusy
from t3track.host.backup import backup_all, backup_user, list_backups, newest_backup, snapshot_database
from t3track.host.manifest import MANIFEST, BackupError, BackupMismatch, BackupTimeout
from t3track.host.restore import restore_database
from t3track.host.sqlite import Deadline, interrupt_after, max_migration_id
from t3track.night.gates import check_backup_present
from t3track.state import StateStore

NOW = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)


def make_state_db(path: Path, *, migrations: int | None = 52, rows: int = 10, wal: bool = True) -> Path:
    """A database shaped like T3's: WAL mode, effect_sql_migrations, some data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    if wal:
        conn.execute("PRAGMA journal_mode=WAL")
    if migrations is not None:
        conn.execute("CREATE TABLE effect_sql_migrations (migration_id INTEGER PRIMARY KEY, created_at TEXT, name TEXT)")
        conn.executemany("INSERT INTO effect_sql_migrations VALUES (?, '2026-01-01', ?)",
                         [(i, f"{i}_Migration") for i in range(1, migrations + 1)])
    conn.execute("CREATE TABLE threads (id INTEGER PRIMARY KEY, title TEXT)")
    conn.executemany("INSERT INTO threads (title) VALUES (?)", [(f"thread {i}",) for i in range(rows)])
    conn.commit()
    conn.close()
    return path


def rows(path: Path, table: str = "threads") -> list[tuple]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
    finally:
        conn.close()


def add_migration(db: Path, migration_id: int) -> None:
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO effect_sql_migrations VALUES (?, '2026-11-27', 'new')", (migration_id,))
    conn.commit()
    conn.close()


def config_for(tmp_path: Path, **backup: object):
    return parse_config({
        "root": str(tmp_path / "root"), "state_dir": str(tmp_path / "state"), "backup_dir": str(tmp_path / "backups"),
        "users": [{"name": "alice", "base_dir": str(tmp_path / "alice"), "port": 3773},
                  {"name": "bob", "base_dir": str(tmp_path / "bob"), "port": 3774}],
        "backup": backup,
    })


@pytest.fixture
def alice(tmp_path):
    db = make_state_db(tmp_path / "alice" / "userdata" / "state.sqlite")
    return tmp_path / "alice", db


@pytest.fixture
def config(tmp_path, alice):
    return config_for(tmp_path)


def entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# ---------------------------------------------------------------- making a backup


def test_backup_writes_copy_and_manifest_with_source_size_checksum_migrations_and_version(config, alice):
    info = backup_user(config, config.user("alice"), now=NOW)
    assert info.path == config.backup_dir / "alice" / "20261127T030000Z"
    manifest = json.loads((info.path / MANIFEST).read_text())
    entry = manifest["files"]["state.sqlite"]
    assert entry["source"] == str(alice[1])
    assert entry["size"] == (info.path / "state.sqlite").stat().st_size
    import hashlib
    assert entry["sha256"] == hashlib.sha256((info.path / "state.sqlite").read_bytes()).hexdigest()
    assert entry["max_migration_id"] == 52 and entry["integrity_check"] == "ok"
    assert manifest["created_at"] == "2026-11-27T03:00:00Z"
    assert manifest["t3track_version"] == __version__ and manifest["user"] == "alice"
    assert rows(info.path / "state.sqlite") == rows(alice[1])
    assert newest_backup(config, "alice").path == info.path


def test_backup_files_are_private_and_nothing_partial_is_left(config, alice):
    info = backup_user(config, config.user("alice"), now=NOW)
    for directory in (config.backup_dir / "alice", info.path):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for name in ("state.sqlite", MANIFEST):
        assert stat.S_IMODE((info.path / name).stat().st_mode) == 0o600
    assert entries(config.backup_dir / "alice") == ["20261127T030000Z"]


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give files away")
def test_backup_is_owned_like_the_source_database_inside_a_dir_the_user_cannot_reach(config, alice):
    for path in (alice[1].parent, alice[1], *alice[1].parent.glob("state.sqlite-*")):
        os.chown(path, 65534, 65534)
    for parent in alice[1].parents[1:]:  # the owner reads its tree itself: it must reach it, as on a host
        parent.chmod(parent.stat().st_mode | 0o011)
    info = backup_user(config, config.user("alice"), now=NOW)
    for path in (info.path, info.path / "state.sqlite", info.path / MANIFEST):
        assert (path.stat().st_uid, path.stat().st_gid) == (65534, 65534)
    assert (config.backup_dir / "alice").stat().st_uid == 0


def test_an_existing_user_backup_dir_is_made_private(config, alice):
    (config.backup_dir / "alice").mkdir(parents=True, mode=0o755)
    os.chmod(config.backup_dir / "alice", 0o755)
    backup_user(config, config.user("alice"), now=NOW)
    assert stat.S_IMODE((config.backup_dir / "alice").stat().st_mode) == 0o700


def test_statev2_is_backed_up_when_present(config, alice):
    make_state_db(alice[0] / "userdata" / "statev2.sqlite", migrations=60, rows=3)
    info = backup_user(config, config.user("alice"), now=NOW)
    assert set(info.files) == {"state.sqlite", "statev2.sqlite"}
    assert info.files["statev2.sqlite"]["max_migration_id"] == 60
    assert len(rows(info.path / "statev2.sqlite")) == 3


def test_backup_of_wal_database_while_another_connection_keeps_writing_holds_every_committed_row(config, alice):
    committed: list[int] = []
    enough, stop, errors = threading.Event(), threading.Event(), []

    def writer():
        conn = sqlite3.connect(alice[1], timeout=30)
        try:
            while not stop.is_set():
                with conn:
                    new_id = conn.execute("INSERT INTO threads (title) VALUES ('concurrent')").lastrowid
                committed.append(new_id)
                if len(committed) >= 200:
                    enough.set()
        except Exception as exc:  # surfaced below: the writer must never be blocked by the backup
            errors.append(exc)
            enough.set()
        finally:
            conn.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert enough.wait(30)
        committed_before = list(committed)
        info = backup_user(config, config.user("alice"), now=NOW)
    finally:
        stop.set()
        thread.join(30)
    assert not errors
    ids = [r[0] for r in rows(info.path / "state.sqlite")]
    assert set(committed_before) <= set(ids)            # every row committed before the backup began
    assert ids == list(range(1, len(ids) + 1))          # a consistent prefix: no holes, nothing torn


def test_backup_holds_committed_rows_but_not_an_open_write_transaction(config, alice):
    writer = sqlite3.connect(alice[1])
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO threads (title) VALUES ('uncommitted')")
    try:
        info = backup_user(config, config.user("alice"), now=NOW)
    finally:
        writer.rollback()
        writer.close()
    titles = [r[1] for r in rows(info.path / "state.sqlite")]
    assert "uncommitted" not in titles and len(titles) == 10


def test_a_missing_database_fails_naming_the_user_and_leaves_nothing(tmp_path, alice):
    config = config_for(tmp_path)
    with pytest.raises(BackupError) as err:
        backup_user(config, config.user("bob"), now=NOW)
    assert err.value.message.startswith("bob: no database at ")
    assert entries(config.backup_dir / "bob") == []


def test_a_locked_database_times_out_and_leaves_nothing_behind(tmp_path, alice):
    config = config_for(tmp_path, timeout=timedelta(milliseconds=300))
    holder = sqlite3.connect(alice[1], isolation_level=None)
    holder.execute("PRAGMA locking_mode=EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(BackupTimeout) as err:
            backup_user(config, config.user("alice"), now=NOW)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert err.value.message.startswith("alice: ") and "timed out" in err.value.message
    assert entries(config.backup_dir / "alice") == []


def test_a_backup_slower_than_its_timeout_is_interrupted_and_leaves_nothing_behind(tmp_path, alice):
    conn = sqlite3.connect(alice[1])
    conn.execute("CREATE TABLE blobs (b BLOB)")
    conn.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000) "
                 "INSERT INTO blobs SELECT randomblob(4000) FROM n")  # ~40 MB: far more than 5 ms of work
    conn.commit()
    conn.close()
    config = config_for(tmp_path, timeout=timedelta(milliseconds=5))
    with pytest.raises(BackupTimeout):
        backup_user(config, config.user("alice"), now=NOW)
    assert entries(config.backup_dir / "alice") == []


def test_a_statement_running_past_the_deadline_is_interrupted():
    conn = sqlite3.connect(":memory:")
    endless = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n WHERE i < 1e15"
    with pytest.raises(BackupTimeout):
        with interrupt_after(conn, Deadline(0.05, "test")):
            conn.execute(endless).fetchone()


def test_a_partial_dir_left_by_a_killed_run_is_removed_at_the_next_backup(config, alice):
    leftover = config.backup_dir / "alice" / ".20261126T030000Z.partial"
    leftover.mkdir(parents=True)
    (leftover / "state.sqlite").write_bytes(b"half a copy")
    backup_user(config, config.user("alice"), now=NOW)
    assert entries(config.backup_dir / "alice") == ["20261127T030000Z"]


def test_two_backups_in_the_same_second_do_not_collide(config, alice):
    first = backup_user(config, config.user("alice"), now=NOW)
    second = backup_user(config, config.user("alice"), now=NOW)
    assert first.path != second.path and (second.path / MANIFEST).is_file()


def test_retention_keeps_the_newest_n_and_the_newest_of_each_day_within_the_window(tmp_path, alice):
    config = config_for(tmp_path, keep=2, keep_daily_days=3)
    user = config.user("alice")
    moments = [NOW - timedelta(days=d, hours=h) for d in (5, 2, 1, 0) for h in (2, 1)]
    for moment in sorted(moments):
        backup_user(config, user, now=moment)
    kept = {b.created_at for b in list_backups(config, "alice")}
    assert kept == {
        NOW - timedelta(hours=1), NOW - timedelta(hours=2),   # the newest two (today)
        NOW - timedelta(days=1, hours=1),                     # newest of yesterday
        NOW - timedelta(days=2, hours=1),                     # newest of the day before
    }


# ---------------------------------------------------------------- snapshot and restore


def test_restore_round_trips_rows_and_replaces_stale_wal_and_shm(config, alice, tmp_path):
    info = backup_user(config, config.user("alice"), now=NOW)
    dest = tmp_path / "sandbox" / "userdata"
    dest.mkdir(parents=True)
    make_state_db(dest / "state.sqlite", rows=99)
    (dest / "state.sqlite-wal").write_bytes(b"stale wal frames")
    (dest / "state.sqlite-shm").write_bytes(b"stale shm")
    restore_database(info, dest)
    assert rows(dest / "state.sqlite") == rows(alice[1])
    assert rows(dest / "state.sqlite", "effect_sql_migrations") == rows(alice[1], "effect_sql_migrations")
    assert entries(dest) == ["state.sqlite"]


def test_restore_keeps_the_owner_and_mode_of_the_file_it_replaces(config, alice, tmp_path):
    info = backup_user(config, config.user("alice"), now=NOW)
    dest = make_state_db(tmp_path / "live" / "userdata" / "state.sqlite")
    os.chmod(dest, 0o640)
    if os.geteuid() == 0:
        os.chown(dest, 65534, 65534)
    before = dest.stat()
    restore_database(info, dest.parent)
    after = dest.stat()
    assert (after.st_uid, after.st_gid, stat.S_IMODE(after.st_mode)) == (before.st_uid, before.st_gid, 0o640)


def test_restore_refuses_a_tampered_backup_and_leaves_the_destination_untouched(config, alice, tmp_path):
    info = backup_user(config, config.user("alice"), now=NOW)
    conn = sqlite3.connect(info.path / "state.sqlite")
    conn.execute("UPDATE threads SET title = 'tampered'")
    conn.commit()
    conn.close()
    dest = make_state_db(tmp_path / "live" / "userdata" / "state.sqlite", rows=3)
    before = dest.read_bytes()
    with pytest.raises(BackupMismatch) as err:
        restore_database(info, dest.parent)
    assert "does not match its manifest" in err.value.message and err.value.hint
    assert dest.read_bytes() == before and entries(dest.parent) == ["state.sqlite"]


def test_restore_refuses_a_manifest_naming_a_file_outside_the_database_set(config, alice, tmp_path):
    info = backup_user(config, config.user("alice"), now=NOW)
    manifest = dict(info.manifest, files={**info.manifest["files"], "../../etc/passwd": {"size": 1, "sha256": "x"}})
    with pytest.raises(BackupMismatch):
        restore_database(type(info)(info.user, info.path, info.created_at, manifest), tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_restore_never_follows_a_symlink_planted_in_a_backup(config, alice, tmp_path):
    info = backup_user(config, config.user("alice"), now=NOW)
    secret = tmp_path / "secret"
    secret.write_bytes((info.path / "state.sqlite").read_bytes())  # even with a matching checksum
    (info.path / "state.sqlite").unlink()
    (info.path / "state.sqlite").symlink_to(secret)
    dest = tmp_path / "dest"
    with pytest.raises(BackupError):
        restore_database(info, dest)
    assert entries(dest) == []


def test_restore_moves_aside_a_database_the_backup_does_not_hold(config, alice, tmp_path):
    info = backup_user(config, config.user("alice"), now=NOW)   # no statev2.sqlite then
    live = alice[0] / "userdata"
    make_state_db(live / "statev2.sqlite", rows=1)              # created later by the candidate
    restore_database(info, live)
    assert not (live / "statev2.sqlite").exists()
    aside = [n for n in entries(live) if n.startswith("statev2.sqlite.before-restore-")]
    assert len(aside) == 1 and len(rows(live / aside[0])) == 1


def test_snapshot_writes_the_backup_format_into_the_named_dir_and_restores(alice, tmp_path):
    dest = tmp_path / "state" / "snapshots" / "run-1" / "alice"
    info = snapshot_database(alice[0], dest, now=NOW)
    assert info.path == dest and info.user == "alice" and info.files["state.sqlite"]["max_migration_id"] == 52
    for directory in (dest, dest.parent, dest.parent.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    conn = sqlite3.connect(alice[1])
    conn.execute("DELETE FROM threads")
    conn.commit()
    conn.close()
    restore_database(info, alice[0] / "userdata")
    assert len(rows(alice[1])) == 10


def test_snapshot_never_overwrites_an_existing_one(alice, tmp_path):
    dest = tmp_path / "snap" / "alice"
    snapshot_database(alice[0], dest, now=NOW)
    with pytest.raises(BackupError, match="already exists"):
        snapshot_database(alice[0], dest, now=NOW)


# ---------------------------------------------------------------- max_migration_id


def test_max_migration_id_reads_the_highest_id_or_none_without_the_table(tmp_path):
    assert max_migration_id(make_state_db(tmp_path / "a.sqlite", migrations=31)) == 31
    assert max_migration_id(make_state_db(tmp_path / "b.sqlite", migrations=None)) is None


def test_max_migration_id_never_creates_a_missing_database(tmp_path):
    with pytest.raises(BackupError):
        max_migration_id(tmp_path / "missing.sqlite")
    assert not (tmp_path / "missing.sqlite").exists()


# ---------------------------------------------------------------- the backup-present gate


def test_gate_passes_on_a_fresh_verified_backup(config, alice):
    info = backup_user(config, config.user("alice"), now=NOW)
    check = check_backup_present(config, config.user("alice"), now=NOW + timedelta(hours=1))
    assert check.ok and check.backup.path == info.path and "migrations up to 52" in check.detail


def test_gate_fails_without_any_backup(config, alice):
    check = check_backup_present(config, config.user("alice"), now=NOW)
    assert not check.ok and check.backup is None
    assert check.detail.startswith("alice: no backup") and "run `t3track backup --user alice`" in check.detail


def test_gate_fails_on_a_backup_older_than_backup_max_age(config, alice):
    info = backup_user(config, config.user("alice"), now=NOW)
    check = check_backup_present(config, config.user("alice"), now=NOW + timedelta(hours=27))
    assert not check.ok and check.backup.path == info.path
    assert str(info.path) in check.detail and "backup_max_age" in check.detail
    assert "run `t3track backup --user alice`" in check.detail


def test_gate_fails_on_a_backup_dated_in_the_future_instead_of_calling_it_fresh(config, alice):
    info = backup_user(config, config.user("alice"), now=NOW + timedelta(days=8))  # the clock ran 8 days ahead
    check = check_backup_present(config, config.user("alice"), now=NOW)
    assert not check.ok and check.backup.path == info.path
    assert "in the future" in check.detail and "0m00s" not in check.detail
    assert check_backup_present(config, config.user("alice"), now=NOW + timedelta(days=8, minutes=3)).ok


def test_gate_fails_when_the_copy_no_longer_matches_its_checksum(config, alice):
    info = backup_user(config, config.user("alice"), now=NOW)
    with open(info.path / "state.sqlite", "r+b") as handle:  # flip one bit of unused space: still sound
        handle.seek(200)
        byte = handle.read(1)[0]
        handle.seek(200)
        handle.write(bytes([byte ^ 0x01]))
    check = check_backup_present(config, config.user("alice"), now=NOW)
    assert not check.ok and "does not match its manifest" in check.detail and str(info.path) in check.detail
    assert "run `t3track backup --user alice`" in check.detail


def _rewrite_manifest_checksum(info) -> None:
    """Make a damaged copy consistent with its manifest, so only quick_check can catch it."""
    import hashlib
    manifest = json.loads((info.path / MANIFEST).read_text())
    data = (info.path / "state.sqlite").read_bytes()
    manifest["files"]["state.sqlite"].update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    (info.path / MANIFEST).write_text(json.dumps(manifest))


def test_gate_fails_when_the_copy_fails_quick_check(config, alice):
    info = backup_user(config, config.user("alice"), now=NOW)
    copy = info.path / "state.sqlite"
    page_size = sqlite3.connect(copy).execute("PRAGMA page_size").fetchone()[0]
    with open(copy, "r+b") as handle:  # scribble over the b-tree pages after the schema page
        handle.seek(page_size)
        handle.write(b"\xff" * (copy.stat().st_size - page_size))
    _rewrite_manifest_checksum(info)
    check = check_backup_present(config, config.user("alice"), now=NOW)
    assert not check.ok and "quick_check" in check.detail and "run `t3track backup --user alice`" in check.detail


def test_gate_fails_when_the_backup_has_no_migrations_table(tmp_path):
    make_state_db(tmp_path / "alice" / "userdata" / "state.sqlite", migrations=None)
    config = config_for(tmp_path)
    backup_user(config, config.user("alice"), now=NOW)
    check = check_backup_present(config, config.user("alice"), now=NOW)
    assert not check.ok and "no effect_sql_migrations table" in check.detail and "--user alice" in check.detail


def test_gate_fails_when_the_live_database_has_migrated_past_the_backup(config, alice):
    backup_user(config, config.user("alice"), now=NOW)
    add_migration(alice[1], 53)
    check = check_backup_present(config, config.user("alice"), now=NOW)
    assert not check.ok and "migrations up to 52" in check.detail and "live database has 53" in check.detail


def test_gate_fails_when_the_live_state_has_a_statev2_the_backup_lacks(config, alice):
    backup_user(config, config.user("alice"), now=NOW)
    make_state_db(alice[0] / "userdata" / "statev2.sqlite")
    check = check_backup_present(config, config.user("alice"), now=NOW)
    assert not check.ok and "lacks statev2.sqlite" in check.detail


# ---------------------------------------------------------------- backup_all and the CLI


def test_backup_all_goes_on_after_one_user_fails_and_records_history(config, alice):
    results = backup_all(config)
    assert [(r.user, r.ok) for r in results] == [("alice", True), ("bob", False)]
    assert results[1].error.startswith("bob: ") and results[1].hint
    assert len(list_backups(config, "alice")) == 1
    events = StateStore(config.state_dir).history()
    assert [(e["event"], e["user"], e["outcome"]) for e in reversed(events)] == [
        ("backup", "alice", "ok"), ("backup", "bob", "failed")]


def test_backup_all_refuses_while_another_run_holds_the_lock(config, alice):
    with StateStore(config.state_dir).lock():
        with pytest.raises(LockBusy):
            backup_all(config)
    assert list_backups(config, "alice") == []


@pytest.fixture
def cli_config(tmp_path, alice):
    path = tmp_path / "config.yaml"
    path.write_text(f"""
root: {tmp_path / 'root'}
state_dir: {tmp_path / 'state'}
backup_dir: {tmp_path / 'backups'}
users:
  - {{name: alice, base_dir: {tmp_path / 'alice'}, port: 3773}}
  - {{name: bob, base_dir: {tmp_path / 'bob'}, port: 3774}}
""")
    return path


def t3(config_path: Path, *args: str):
    return CliRunner().invoke(app, ["--config", str(config_path), *args])


def test_cli_backup_of_one_user_exits_0_and_prints_a_json_document(cli_config, tmp_path):
    result = t3(cli_config, "--json", "backup", "--user", "alice")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["ok"] is True and doc["exit_code"] == 0 and [u["user"] for u in doc["users"]] == ["alice"]
    path = Path(doc["users"][0]["backup"]["path"])
    assert (path / MANIFEST).is_file() and doc["users"][0]["backup"]["files"]["state.sqlite"]["max_migration_id"] == 52
    assert entries(tmp_path / "backups") == ["alice"]


def test_cli_backup_exits_3_naming_the_failed_user_and_still_backs_up_the_others(cli_config, tmp_path):
    result = t3(cli_config, "--json", "backup")
    assert result.exit_code == 3
    doc = json.loads(result.stdout)
    assert doc["ok"] is False and doc["exit_code"] == 3
    assert {u["user"]: u["ok"] for u in doc["users"]} == {"alice": True, "bob": False}
    assert "backup failed for bob" in result.stderr and "bob: no database at" in result.stderr
    assert len(list((tmp_path / "backups" / "alice").iterdir())) == 1


def test_cli_backup_of_an_unknown_user_is_a_usage_error(cli_config, tmp_path):
    result = t3(cli_config, "backup", "--user", "carol")
    assert result.exit_code == 2 and "carol" in result.stderr
    assert not (tmp_path / "backups").exists()


def test_cli_status_shows_the_age_of_the_newest_backup(cli_config):
    assert t3(cli_config, "backup", "--user", "alice").exit_code == 0
    doc = json.loads(t3(cli_config, "--json", "status").stdout)
    ages = {u["name"]: u["backup_age_s"] for u in doc["users"]}
    assert ages["bob"] is None and 0 <= ages["alice"] < 3600


def test_read_backup_returns_a_snapshot_and_refuses_an_unreadable_manifest(alice, tmp_path):
    from t3track.host.manifest import read_backup

    made = snapshot_database(alice[0], tmp_path / "snap" / "alice", now=NOW)
    assert read_backup(made.path, "alice") == made
    (made.path / MANIFEST).write_text("{not json")
    with pytest.raises(BackupMismatch, match="unreadable"):
        read_backup(made.path, "alice")


def test_a_sparse_database_declaring_far_more_than_it_holds_is_copied_by_its_pages_in_use(alice, tmp_path):
    """A database with 64 MiB of freed, zeroed pages turned into holes (the user's own doing, or time):
    its copy, the preflight's estimate and the copy's memory follow the pages in use, not the declared size."""
    import resource
    import subprocess

    from t3track.host import usertree

    conn = sqlite3.connect(alice[1])
    conn.execute("PRAGMA secure_delete=ON")  # freed pages are zeroed, so they can be made holes
    conn.execute("CREATE TABLE ballast (blob BLOB)")
    conn.executemany("INSERT INTO ballast VALUES (zeroblob(1048576))", [()] * 64)
    conn.commit()
    conn.execute("DELETE FROM ballast")
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    subprocess.run(["fallocate", "--dig-holes", str(alice[1])], check=True)
    declared, on_disk = alice[1].stat().st_size, alice[1].stat().st_blocks * 512
    assert declared > 64 << 20 and on_disk < 8 << 20, (declared, on_disk)

    assert usertree.db_sizes(alice[0], user="alice") < 8 << 20   # what the preflight asks room for
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    info = snapshot_database(alice[0], tmp_path / "snap" / "alice", now=NOW)
    copy = info.path / "state.sqlite"
    assert copy.stat().st_size < 1 << 20                              # the pages in use, not 64 MiB
    assert rows(copy) == rows(alice[1]) and len(rows(copy)) == 10
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert peak_kib == children_before or peak_kib < 60 << 10        # no child held the 64 MiB in memory
