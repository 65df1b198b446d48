"""Root over users' trees: a hostile user, with a real uid, can neither read nor change what is not
hers through t3track, nor block the others by an odd file. Every tree here is built with real
accounts (created for this module, deleted after it) under a 0755 directory, as homes are."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from t3track.commands.status import status as host_status
from t3track.config import parse_config
from t3track.errors import EnvironmentFault
from t3track.host import backup, restore, sandbox
from t3track.host.manifest import BackupError, read_backup
from t3track.host.sandbox import SandboxFailed, serve_candidate
from t3track.night import gates, swap
from t3track.state import StateStore

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("useradd") is None,
                                reason="needs root and useradd: the users must be real")

BOB_KEY = b"bob-signing-key-" + b"B" * 16


@dataclass
class Account:
    name: str
    uid: int
    gid: int


def _useradd(prefix: str) -> Account:
    import pwd

    name = f"t3h_{prefix}_{secrets.token_hex(4)}"
    subprocess.run(["useradd", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True)
    entry = pwd.getpwnam(name)
    return Account(name, entry.pw_uid, entry.pw_gid)


@pytest.fixture(scope="module")
def accounts():
    made = []
    try:
        made = [_useradd("alice"), _useradd("bob")]
        yield made
    finally:
        for account in made:
            subprocess.run(["userdel", account.name], capture_output=True)


@pytest.fixture
def world(accounts):
    """/tmp/t3h-*/ (0755, like /home): home/<alice>/.t3 and home/<bob>/.t3, each 0700 and its user's."""
    top = Path(tempfile.mkdtemp(prefix="t3h-"))
    top.chmod(0o755)
    try:
        yield top
    finally:
        shutil.rmtree(top, ignore_errors=True)


def make_db(path: Path, *, migrations: int = 52, rows: int = 3, tag: str = "row") -> Path:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE effect_sql_migrations (migration_id INTEGER PRIMARY KEY, created_at TEXT, name TEXT)")
    conn.executemany("INSERT INTO effect_sql_migrations VALUES (?, '2026-01-01', ?)",
                     [(i, f"Migration{i}") for i in range(1, migrations + 1)])
    conn.execute("CREATE TABLE projection_threads (id INTEGER PRIMARY KEY, title TEXT)")
    conn.executemany("INSERT INTO projection_threads (title) VALUES (?)", [(f"{tag}-{i}",) for i in range(rows)])
    conn.commit()
    conn.close()
    return path


def titles(db: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [r[0] for r in conn.execute("SELECT title FROM projection_threads ORDER BY id")]
    finally:
        conn.close()


def chown_tree(path: Path, account: Account) -> None:
    for dirpath, dirnames, filenames in os.walk(path):
        os.chown(dirpath, account.uid, account.gid)
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), account.uid, account.gid, follow_symlinks=False)


def make_home(world: Path, account: Account, tag: str) -> Path:
    home = world / "home" / account.name
    userdata = home / ".t3" / "userdata"
    (userdata / "secrets").mkdir(parents=True)
    (world / "home").chmod(0o755)
    make_db(userdata / "state.sqlite", tag=tag)
    key = BOB_KEY if tag == "bob" else b"alice-key-" + b"A" * 22
    (userdata / "secrets" / "session-signing.bin").write_bytes(key)
    (userdata / "environment-id").write_text(f"env-{tag}\n")
    (userdata / "settings.json").write_text(f'{{"owner": "{tag}"}}')
    (userdata / "keybindings.json").write_text("[]")
    for path in (userdata / "secrets", userdata / "secrets" / "session-signing.bin", userdata / "settings.json"):
        path.chmod(0o700 if path.is_dir() else 0o600)
    chown_tree(home, account)
    home.chmod(0o700)
    return home / ".t3"


def config_for(world: Path, alice: Account, bob: Account, **extra):  # noqa: ANN003, ANN201
    users = [{"name": a.name, "base_dir": str(world / "home" / a.name / ".t3"), "port": 39773 + i, "run_as": a.name}
             for i, a in enumerate((alice, bob))]
    data = {"root": str(world / "root"), "state_dir": str(world / "state"), "backup_dir": str(world / "backups"),
            "users": users, "gates": {"serve_timeout": "10s", "order": ["sandbox-serve"]}, **extra}
    return parse_config(data)


@pytest.fixture
def host(world, accounts):
    alice, bob = accounts
    make_home(world, alice, "alice")
    make_home(world, bob, "bob")
    config = config_for(world, alice, bob, verify_timeout="1s",
                        services={"stop": ["/bin/sh", "-c", f"echo stop {{user}} >> {world}/service-calls"],
                                  "start": ["/bin/sh", "-c", f"echo start {{user}} >> {world}/service-calls"]})
    for user in config.users:
        backup.backup_user(config, user)
    return config, alice, bob


def userdata_of(config, account: Account) -> Path:  # noqa: ANN001
    return config.user(account.name).base_dir / "userdata"


def plant_link(link: Path, target: Path | str, owner: Account) -> None:
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    else:
        link.unlink(missing_ok=True)
    link.symlink_to(target)
    os.chown(link, owner.uid, owner.gid, follow_symlinks=False)


def files_under(path: Path) -> list[Path]:
    return [Path(d) / f for d, _, fs in os.walk(path) for f in fs] if path.exists() else []


def contains(path: Path, needle: bytes) -> list[Path]:
    found = []
    for file in files_under(path):
        try:
            if needle in file.read_bytes():
                found.append(file)
        except OSError:
            continue
    return found


@pytest.fixture
def stop_before_serving(monkeypatch):
    """Replace the candidate's start: what reached the sandbox is recorded, nothing is served."""
    seen: dict[str, bytes] = {}

    def fake_start(server, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        for file in files_under(server.userdata):
            seen[str(file.relative_to(server.userdata))] = file.read_bytes()
        raise SandboxFailed("stopped by the test", reason="exit")

    monkeypatch.setattr(sandbox, "_start", fake_start)
    return seen


def serve(config, account: Account, executable: Path | None = None):  # noqa: ANN001, ANN201
    return serve_candidate(config, config.user(account.name), executable or Path("/nonexistent/t3"), "0.0.42",
                           workdir=config.state_dir / "sandboxes", evidence_dir=config.state_dir / "evidence")


# ---------------------------------------------------------------- reading what root can read


def _root_only_file(world: Path) -> Path:
    private = world / "root-only"
    private.mkdir(mode=0o700)
    secret = private / "secret"
    secret.write_bytes(b"ROOT-ONLY-SECRET-" + b"R" * 16)
    secret.chmod(0o600)
    return secret


@pytest.mark.parametrize("planted", ["settings.json", "secrets", "keybindings.json", "environment-id"])
def test_alices_sandbox_never_copies_what_her_links_name(host, world, stop_before_serving, planted):
    config, alice, bob = host
    live = userdata_of(config, alice)
    targets = {
        "settings.json": userdata_of(config, bob) / "settings.json",        # bob's file
        "secrets": userdata_of(config, bob) / "secrets",                   # bob's signing key
        "keybindings.json": Path("/proc/self/environ"),                     # t3track's own environment
        "environment-id": _root_only_file(world),                           # a 0600 root file
    }
    plant_link(live / planted, targets[planted], alice)
    with pytest.raises(EnvironmentFault) as caught:
        serve(config, alice)
    assert not isinstance(caught.value, SandboxFailed)  # the host's fault, not the candidate's
    assert alice.name in caught.value.message and planted in caught.value.message
    assert stop_before_serving == {}  # the candidate never got a sandbox
    for needle in (BOB_KEY, b"ROOT-ONLY-SECRET", b'"owner": "bob"'):
        assert contains(config.state_dir, needle) == []
    assert list((config.state_dir / "sandboxes").iterdir()) == []


def test_a_fifo_in_alices_secrets_is_the_hosts_fault_and_never_hangs(host):
    config, alice, _ = host
    fifo = userdata_of(config, alice) / "secrets" / "trap.bin"
    os.mkfifo(fifo)
    os.chown(fifo, alice.uid, alice.gid)
    started = time.monotonic()
    with pytest.raises(EnvironmentFault) as caught:
        gates.run_gates(config, "0.0.43-nightly.20261201.1", Path("/nonexistent/t3"),
                        evidence_dir=config.state_dir / "evidence")
    assert time.monotonic() - started < 20
    assert not isinstance(caught.value, SandboxFailed)
    assert alice.name in caught.value.message and "FIFO" in caught.value.message


def test_a_sparse_settings_file_is_refused_by_the_size_it_declares(host):
    config, alice, _ = host
    settings = userdata_of(config, alice) / "settings.json"
    with open(settings, "r+b") as handle:
        handle.truncate(64 << 20)  # 64 MiB on paper, a few bytes on disk
    with pytest.raises(EnvironmentFault) as caught:
        serve(config, alice)
    assert "settings.json" in caught.value.message and "more than" in caught.value.message
    assert list((config.state_dir / "sandboxes").iterdir()) == []


# ---------------------------------------------------------------- writing where root can write


FAKE_SERVER = r'''#!/usr/bin/python3
import http.server, json, sys
args = sys.argv[1:]
port = int(args[args.index("--port") + 1])
print("Token: FAKETOKEN12345", flush=True)
print("fake server ready", flush=True)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"serverVersion": "0.0.42"}).encode()
        self.send_response(200); self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
'''


def test_the_sandbox_log_is_read_from_a_pipe_so_a_planted_link_changes_nothing(host, world, monkeypatch):
    config, alice, _ = host
    bin_dir = world / "bin"
    bin_dir.mkdir(mode=0o755)
    executable = bin_dir / "t3"
    executable.write_text(FAKE_SERVER)
    executable.chmod(0o755)
    victim = _root_only_file(world)
    before = victim.read_bytes()
    real_start = sandbox.runner.start

    def start_after_alice_planted_links(argv, **kwargs):  # noqa: ANN001, ANN003, ANN202
        root = Path(argv[argv.index("--base-dir") + 1]).parent
        for name in ("sandbox-serve.raw.log", "sandbox-serve.log"):
            plant_link(root / name, victim, alice)   # what alice can do in a sandbox she owns
        if kwargs.get("log_path") is not None:
            plant_link(Path(kwargs["log_path"]), victim, alice)
        return real_start(argv, **kwargs)

    monkeypatch.setattr(sandbox.runner, "start", start_after_alice_planted_links)
    with serve(config, alice, executable) as server:
        assert server.url is not None
    assert victim.read_bytes() == before
    evidence = server.evidence.read_text()
    assert "fake server ready" in evidence and "FAKETOKEN12345" not in evidence


# ---------------------------------------------------------------- through the swap itself


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_snapshot_never_copies_the_database_alices_link_names(host):
    config, alice, bob = host
    bobs_db = userdata_of(config, bob) / "state.sqlite"
    plant_link(userdata_of(config, alice) / "state.sqlite", bobs_db, alice)
    store = StateStore(config.state_dir)
    with pytest.raises(BackupError) as caught:
        backup.snapshot_database(config.user(alice.name).base_dir, store.snapshot_dir("run-1") / alice.name,
                                 user=alice.name)
    assert "symbolic link" in caught.value.message and alice.name in caught.value.message
    assert contains(config.state_dir, b"bob-") == []
    with pytest.raises(EnvironmentFault):  # and the swap says so before it stops anyone
        swap.preflight(config, store)


def test_status_reads_alices_database_as_her_and_never_through_her_link(host):
    config, alice, bob = host
    bobs_db = userdata_of(config, bob) / "state.sqlite"
    with sqlite3.connect(bobs_db) as conn:  # bob's history has a migration alice's never had
        conn.execute("INSERT INTO effect_sql_migrations (migration_id, name) VALUES (99, 'BobsOwn')")
    plant_link(userdata_of(config, alice) / "state.sqlite", bobs_db, alice)
    result = host_status(config, StateStore(config.state_dir))
    seen = {u.name: u for u in result.users}
    assert seen[alice.name].migration is None and seen[alice.name].database is None  # bob's 99 never shown
    assert seen[bob.name].migration == 99
    assert any(alice.name in w and "link" in w for w in result.warnings), result.warnings


def test_a_restore_replaces_alices_planted_link_with_a_private_file_of_hers_and_leaves_bobs_alone(host):
    config, alice, bob = host
    snap = backup.snapshot_database(config.user(alice.name).base_dir, config.state_dir / "snap" / alice.name,
                                    user=alice.name)
    bobs_db = userdata_of(config, bob) / "state.sqlite"
    bobs_db.chmod(0o644)
    bob_before = _digest(bobs_db)
    live = userdata_of(config, alice) / "state.sqlite"
    plant_link(live, bobs_db, alice)
    restore.restore_database(snap, userdata_of(config, alice))
    st = os.lstat(live)
    assert stat.S_ISREG(st.st_mode)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (alice.uid, 0o600)
    assert titles(live) == [f"alice-{i}" for i in range(3)]
    assert _digest(bobs_db) == bob_before and titles(bobs_db) == [f"bob-{i}" for i in range(3)]


def test_a_rollback_never_writes_into_bobs_dir_through_alices_userdata_link(host):
    config, alice, bob = host
    store = StateStore(config.state_dir)
    snapshots = store.snapshot_dir("run-1")
    for account in (alice, bob):  # the swap's pre-swap snapshots, as each server has stopped
        swap._snapshotter(snapshots, lambda _: None)(config.user(account.name))
    for account in (alice, bob):  # the candidate migrated both databases forward
        conn = sqlite3.connect(userdata_of(config, account) / "state.sqlite")
        conn.execute("INSERT INTO effect_sql_migrations VALUES (53, '2026-12-01', 'Migration53')")
        conn.commit()
        conn.close()
    alices = userdata_of(config, alice)
    shutil.move(alices, alices.with_name("userdata.moved"))
    plant_link(alices, userdata_of(config, bob), alice)  # she killed her server and pointed it at bob's
    problems: list[str] = []
    restored = swap._restore_from(config, snapshots, only_if_migrated=True, progress=lambda _: None,
                                  problems=problems)
    assert restored == [bob.name]
    assert any(alice.name in p for p in problems)
    bobs_db = userdata_of(config, bob) / "state.sqlite"
    assert titles(bobs_db) == [f"bob-{i}" for i in range(3)]
    assert read_backup(snapshots / bob.name, bob.name).files["state.sqlite"]["max_migration_id"] == 52
    conn = sqlite3.connect(f"file:{bobs_db}?mode=ro", uri=True)
    assert conn.execute("SELECT max(migration_id) FROM effect_sql_migrations").fetchone()[0] == 52
    conn.close()


def test_the_live_probe_never_mints_as_bob_into_bobs_tree_through_alices_link(host):
    from t3track.host import probe

    config, alice, bob = host
    alices = config.user(alice.name).base_dir
    assert probe.base_dir_owner(alices) == alice.name
    shutil.move(alices, alices.with_name(".t3.moved"))
    plant_link(alices, config.user(bob.name).base_dir, alice)
    assert probe.base_dir_owner(alices) not in (bob.name, None)  # neither bob's rights nor root's


def test_one_users_fifo_wal_fails_her_backup_alone_and_quickly(host):
    config, alice, bob = host
    fifo = userdata_of(config, alice) / "state.sqlite-wal"
    fifo.unlink(missing_ok=True)
    os.mkfifo(fifo)
    os.chown(fifo, alice.uid, alice.gid)
    started = time.monotonic()
    results = {r.user: r for r in backup.backup_all(config)}
    assert time.monotonic() - started < 30
    assert not results[alice.name].ok and "FIFO" in results[alice.name].error
    assert results[bob.name].ok


def test_config_check_names_the_link_in_alices_tree(host):
    from t3track.host.usertree import tree_problems

    config, alice, bob = host
    plant_link(userdata_of(config, alice) / "state.sqlite", userdata_of(config, bob) / "state.sqlite", alice)
    problems = tree_problems(config)
    assert [p for p in problems if p.startswith("users[0].base_dir") and "symbolic link" in p]
    assert not [p for p in problems if p.startswith("users[1]")]


# ---------------------------------------------------------------- one user blocking everyone


@pytest.fixture
def tiny_state_dir(world):
    mount = world / "state"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_state_dir_too_small_for_the_snapshots_is_exit_3_before_anyone_stops(world, accounts, tiny_state_dir):
    alice, bob = accounts
    for account in accounts:
        base = make_home(world, account, account.name)
        conn = sqlite3.connect(base / "userdata" / "state.sqlite")
        conn.execute("CREATE TABLE blobs (b BLOB)")
        conn.execute("INSERT INTO blobs VALUES (randomblob(2000000))")
        conn.commit()
        conn.close()
    calls = world / "service-calls"
    config = config_for(world, alice, bob, verify_timeout="1s",
                        services={"stop": ["/bin/sh", "-c", f"echo stop {{user}} >> {calls}"],
                                  "start": ["/bin/sh", "-c", f"echo start {{user}} >> {calls}"]})
    store = StateStore(config.state_dir)
    plan = swap.plan_swap(store, run_id="run-1", from_version="0.0.42", to_version="0.0.43-nightly.20261201.1")
    with pytest.raises(EnvironmentFault) as caught:
        swap.swap_and_verify(config, store, plan)
    assert caught.value.exit_code == 3 and "nothing was stopped" in caught.value.message
    assert not calls.exists()           # no server was stopped
    assert not store.journal_path.exists()


def test_alices_odd_tree_stops_no_server_and_changes_no_file(host, world):
    config, alice, bob = host
    fifo = userdata_of(config, alice) / "state.sqlite-wal"
    fifo.unlink(missing_ok=True)
    os.mkfifo(fifo)
    os.chown(fifo, alice.uid, alice.gid)
    bobs_db = userdata_of(config, bob) / "state.sqlite"
    before = _digest(bobs_db)
    store = StateStore(config.state_dir)
    plan = swap.plan_swap(store, run_id="run-1", from_version="0.0.42", to_version="0.0.43-nightly.20261201.1")
    with pytest.raises(EnvironmentFault) as caught:
        swap.swap_and_verify(config, store, plan)
    assert caught.value.exit_code == 3 and alice.name in caught.value.message and "FIFO" in caught.value.message
    assert not (world / "service-calls").exists()
    assert _digest(bobs_db) == before


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
