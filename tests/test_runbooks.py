"""The runbooks tell operators what to type; these tests hold them to it.

- every `t3track …` command in a runbook (code blocks and inline code) exists, with the options it
  uses, checked through `python -m t3track <command> --help`;
- the manual rollback of t3-version-bump.md, run block by block on a temporary root, puts the good
  version back behind `current`, restores the databases from the pre-swap backup and checks the
  servers.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RUNBOOKS = REPO / "runbooks"
BUMP_RUNBOOK = RUNBOOKS / "t3-version-bump.md"
EXECUTABLE = "node_modules/@t3code/t3-linux-x64/t3"

FENCE_RE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE_RE = re.compile(r"(?<!`)`(t3track\s[^`]+)`(?!`)")
GLOBAL_FLAGS = {"--json"}
GLOBAL_WITH_VALUE = {"--config", "-c"}
GROUPS = {"config"}  # commands that take a subcommand: `config check`


def _runbook_commands() -> list[tuple[str, str]]:
    """(runbook name, command line) for every `t3track …` an operator is told to type."""
    found = []
    for path in sorted(RUNBOOKS.glob("*.md")):
        text = path.read_text(encoding="utf-8")
        for block in FENCE_RE.findall(text):
            for line in block.splitlines():
                line = re.sub(r"\s+#.*$", "", line.strip())
                if re.match(r"t3track\s", line):
                    found.append((path.name, line))
        prose = FENCE_RE.sub("", text)
        for span in INLINE_RE.findall(prose):
            found.append((path.name, " ".join(span.split())))
    return list(dict.fromkeys(found))


def _subcommand_and_options(line: str) -> tuple[list[str], list[str]]:
    words = shlex.split(line, comments=True)[1:]
    sub: list[str] = []
    options: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        if word in GLOBAL_WITH_VALUE:
            i += 2
            continue
        if word in GLOBAL_FLAGS:
            i += 1
            continue
        if word.startswith("-"):
            options.append(word.split("=", 1)[0])
        elif not sub or (sub[-1] in GROUPS and len(sub) == 1):
            sub.append(word)
        i += 1
    return sub, options


COMMANDS = _runbook_commands()


def test_runbooks_name_t3track_commands():
    names = {name for name, _ in COMMANDS}
    assert "t3-version-bump.md" in names
    assert len(COMMANDS) >= 20


@functools.cache
def _help(*sub: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "t3track", *sub, "--help"], capture_output=True,
                          text=True, env=env, timeout=60, cwd=REPO)


@pytest.mark.parametrize("runbook,line", COMMANDS, ids=[f"{n}: {c}" for n, c in COMMANDS])
def test_runbook_command_exists_with_its_options(runbook, line):
    sub, options = _subcommand_and_options(line)
    assert sub, f"{runbook}: no subcommand in {line!r}"
    proc = _help(*sub)
    assert proc.returncode == 0, f"{runbook}: `t3track {' '.join(sub)} --help` failed:\n{proc.stdout}{proc.stderr}"
    for option in options:
        assert option in proc.stdout, f"{runbook}: `t3track {' '.join(sub)}` has no {option} ({line!r})"


# --- the manual rollback, on a temporary root ------------------------------------------------------

def _marked_blocks(text: str, mark: str) -> list[str]:
    pattern = re.compile(rf"<!-- manual-rollback: {mark} -->\n```[^\n]*\n(.*?)^```", re.S | re.M)
    return pattern.findall(text)


def _make_db(path: Path, migrations: int, rows: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE IF NOT EXISTS effect_sql_migrations"
                " (migration_id INTEGER PRIMARY KEY, created_at TEXT, name TEXT)")
    con.execute("CREATE TABLE IF NOT EXISTS projects (id INTEGER PRIMARY KEY, title TEXT)")
    con.executemany("INSERT OR IGNORE INTO effect_sql_migrations VALUES (?, '2026-06-01', ?)",
                    [(i, f"m{i}") for i in range(1, migrations + 1)])
    con.executemany("INSERT INTO projects (title) VALUES (?)", [(r,) for r in rows])
    con.commit()
    con.close()


def _backup(live: Path, dest_dir: Path) -> None:
    """What `t3track backup` leaves: VACUUM INTO copy + manifest with its sha256."""
    dest_dir.mkdir(parents=True)
    con = sqlite3.connect(live)
    con.execute("VACUUM INTO ?", (str(dest_dir / "state.sqlite"),))
    con.close()
    digest = hashlib.sha256((dest_dir / "state.sqlite").read_bytes()).hexdigest()
    (dest_dir / "manifest.json").write_text(json.dumps({"source": str(live), "sha256": digest,
                                                        "created_at": "2026-06-16T02:30:00Z"}))


def _rows(db: Path, sql: str) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


class _Environment(http.server.BaseHTTPRequestHandler):
    version = "0.0.0"

    def do_GET(self):  # noqa: N802 (http.server's name)
        body = json.dumps({"environmentId": "e", "serverVersion": self.version}).encode()
        self.send_response(200 if self.path == "/.well-known/t3/environment" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def serving_good_version():
    """A loopback server answering /.well-known/t3/environment like the restarted old version."""
    handler = type("Good", (_Environment,), {"version": "0.0.24"})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.mark.skipif(not (shutil.which("sqlite3") and shutil.which("curl")), reason="needs sqlite3 and curl")
def test_manual_rollback_restores_symlink_and_databases(tmp_path, serving_good_version):
    text = BUMP_RUNBOOK.read_text(encoding="utf-8")
    settings = _marked_blocks(text, "settings")
    steps = _marked_blocks(text, "step")
    assert len(settings) == 1 and len(steps) == 5
    names = set(re.findall(r"^([A-Z_]+)=", settings[0], re.M))
    assert names == {"ROOT", "GOOD", "USERS", "ENVS", "BACKUPS", "SWAP_AT"}

    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    root = tmp_path / "opt/t3"
    for version in ("0.0.24", "0.0.25"):
        exe = root / "versions" / version / EXECUTABLE
        exe.parent.mkdir(parents=True)
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
    (root / "current").symlink_to("versions/0.0.25")  # the bad swap

    base = tmp_path / "home" / user / ".t3"
    live = base / "userdata" / "state.sqlite"
    _make_db(live, migrations=52, rows=["before the swap"])
    backups = tmp_path / "backups"
    _backup(live, backups / user / "20260616T023012Z")  # the nightly backup, before the swap
    # the bad version migrates forward and users keep writing; a later backup holds that state
    _make_db(live, migrations=53, rows=["after the swap"])
    _backup(live, backups / user / "20260617T023008Z")
    envs = tmp_path / "etc/t3/users"
    envs.mkdir(parents=True)
    (envs / f"{user}.env").write_text(f"T3_PORT={serving_good_version}\nT3_BASE_DIR={base}\n")

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "systemctl.calls"
    (bin_dir / "systemctl").write_text(f'#!/bin/sh\necho "$*" >> {shlex.quote(str(calls))}\n')
    (bin_dir / "systemctl").chmod(0o755)

    script = "\n".join([
        f"ROOT={shlex.quote(str(root))}", "GOOD=0.0.24", f"USERS={shlex.quote(user)}",
        f"ENVS={shlex.quote(str(envs))}", f"BACKUPS={shlex.quote(str(backups))}",
        "SWAP_AT=20260616T033000Z", *steps])
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    assert os.readlink(root / "current") == "versions/0.0.24"
    assert not (root / "current.rollback").exists()
    assert _rows(live, "SELECT title FROM projects") == [("before the swap",)]
    assert _rows(live, "SELECT max(migration_id) FROM effect_sql_migrations") == [(52,)]
    assert _rows(live, "PRAGMA integrity_check") == [("ok",)]
    assert oct(live.stat().st_mode & 0o777) == "0o600"
    aside = base / "pre-rollback-20260616T033000Z" / "state.sqlite"
    assert _rows(aside, "SELECT title FROM projects") == [("before the swap",), ("after the swap",)]
    assert calls.read_text().splitlines() == [f"stop t3@{user}.service", f"start t3@{user}.service"]
    assert f"{user}: serving 0.0.24" in proc.stdout


def test_manual_rollback_stops_when_the_backup_does_not_match_its_manifest(tmp_path):
    text = BUMP_RUNBOOK.read_text(encoding="utf-8")
    restore = _marked_blocks(text, "step")[2]
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    base = tmp_path / "home/.t3"
    live = base / "userdata/state.sqlite"
    _make_db(live, migrations=53, rows=["live"])
    backup = tmp_path / "backups" / user / "20260616T023012Z"
    _backup(live, backup)
    (backup / "manifest.json").write_text(json.dumps({"sha256": "0" * 64}))  # tampered
    envs = tmp_path / "envs"
    envs.mkdir()
    (envs / f"{user}.env").write_text(f"T3_PORT=1\nT3_BASE_DIR={base}\n")
    script = (f"USERS={shlex.quote(user)} ENVS={shlex.quote(str(envs))} "
              f"BACKUPS={shlex.quote(str(tmp_path / 'backups'))} SWAP_AT=20260616T033000Z\n{restore}")
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert _rows(live, "SELECT title FROM projects") == [("live",)]
