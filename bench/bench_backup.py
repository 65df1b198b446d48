"""Throughput of `t3track backup` on a ~1 GB WAL database, next to a plain file copy of the same file.

    /tmp/venv/bin/python bench/bench_backup.py [--size-mb 1024] [--dir /var/tmp] [--keep]

Builds <tmp>/alice/userdata/state.sqlite (WAL mode, T3's migrations table, rows of JSON-ish text),
writes a config beside it, times the real CLI (`python -m t3track --config ... --json backup`: VACUUM
INTO + integrity_check + sha256 + fsync + rename) and a plain copy of the main file (copy + fsync),
and prints MB/s for both with the backup's phases from its manifest. Both run on a warm page cache
(the database was just written); the copy goes first so it does not profit from the backup's reads.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from t3track import runner

ROW_TEXT_BYTES = 2000  # hex of 1000 random bytes: incompressible, like a thread's message JSON
BATCH_ROWS = 20_000


def build_database(db: Path, size_mb: int) -> None:
    db.parent.mkdir(parents=True)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE effect_sql_migrations (migration_id INTEGER PRIMARY KEY, created_at TEXT, name TEXT)")
    conn.executemany("INSERT INTO effect_sql_migrations VALUES (?, '2026-01-01', ?)",
                     [(i, f"{i}_Migration") for i in range(1, 53)])
    conn.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY, thread_id INTEGER, body TEXT)")
    conn.execute("CREATE INDEX messages_thread ON messages (thread_id)")
    conn.commit()
    while db.stat().st_size < size_mb * 1_000_000:
        with conn:
            conn.execute(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
                "INSERT INTO messages (thread_id, body) SELECT abs(random() % 5000), hex(randomblob(?)) FROM n",
                (BATCH_ROWS, ROW_TEXT_BYTES // 2))
    conn.close()  # checkpoints: the file on disk is the whole database


def plain_copy(source: Path, dest: Path) -> float:
    started = time.monotonic()
    shutil.copyfile(source, dest)
    fd = os.open(dest, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    return time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--dir", type=Path, default=None, help="where to build it (default: the system temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="t3track-bench-", dir=args.dir))
    try:
        db = work / "alice" / "userdata" / "state.sqlite"
        started = time.monotonic()
        build_database(db, args.size_mb)
        size = db.stat().st_size
        print(f"built {db}: {size / 1e6:.0f} MB in {time.monotonic() - started:.1f}s")

        # A live-looking WAL: a second connection holds the database open with uncheckpointed frames.
        writer = sqlite3.connect(db)
        writer.execute("PRAGMA wal_autocheckpoint=0")
        with writer:
            writer.execute("INSERT INTO messages (thread_id, body) SELECT thread_id, body FROM messages LIMIT 2000")
        wal = Path(f"{db}-wal")
        print(f"WAL {wal.stat().st_size / 1e6:.1f} MB held open by another connection")

        copy_s = plain_copy(db, work / "plain-copy.sqlite")
        (work / "plain-copy.sqlite").unlink()

        config = work / "config.yaml"
        config.write_text(f"root: {work / 'root'}\nstate_dir: {work / 'state'}\nbackup_dir: {work / 'backups'}\n"
                          f"backup: {{timeout: 30m}}\n"
                          f"users:\n  - {{name: alice, base_dir: {work / 'alice'}, port: 3773}}\n")
        done = runner.run([sys.executable, "-m", "t3track", "--config", str(config), "--json", "backup"],
                          timeout=3600)
        writer.close()
        if not done.ok:
            print(done.describe(), file=sys.stderr)
            return 1
        entry = json.loads(done.stdout)["users"][0]["backup"]["files"]["state.sqlite"]
        mb = size / 1e6
        print(f"plain copy (copyfile + fsync): {copy_s:6.2f}s  {mb / copy_s:7.0f} MB/s")
        print(f"t3track backup (whole command): {done.duration_s:6.2f}s  {mb / done.duration_s:7.0f} MB/s"
              f"  (copy {entry['size'] / 1e6:.0f} MB)")
        print(f"  phases: VACUUM INTO {entry['vacuum_s']:.2f}s ({mb / entry['vacuum_s']:.0f} MB/s), "
              f"integrity_check {entry['integrity_check_s']:.2f}s, sha256 {entry['sha256_s']:.2f}s")
        return 0
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
