"""The ownership lock of newer builds (t3code-contract.md, "Ownership lock"; upstream
apps/server/src/serverOwnership.ts): userdata/server-owner.sqlite is held for a server's life and never
deleted, a second server on the same base dir exits at once, a server-runtime.json naming a live pid
makes a new one refuse. So a sandbox copy carries neither file, a restore never deletes the lock file,
and a swap starts the new version only once the old process has exited."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from tests.support.host import SUPERVISOR, Host, build_host, nightly

from t3track import runner
from t3track.host import sandbox
from t3track.host.tree import executable_of

pytestmark = pytest.mark.slow

V2_CURRENT = "0.0.46-nightly.20261003.2610"
LOCKING = {"database": "statev2", "ownership_lock": True}


def v2_nightly(n: int) -> str:
    return nightly(n, base="0.0.46", day=20261010)


@pytest.fixture
def lock_host(tmp_path: Path):
    host = build_host(tmp_path / "host", users=("alice",), current=V2_CURRENT, current_migrations=55,
                      current_settings=LOCKING)
    assert host.t3track("backup").returncode == 0
    yield host
    host.close()


def no_wait_stop(host: Host) -> None:
    """A stop command that returns as soon as it has sent SIGTERM (`systemctl stop --no-block`, `kill`)."""
    stop = [sys.executable, str(SUPERVISOR), "stop", "--user", "{user}", "--run-dir", str(host.run_dir), "--no-wait"]
    services = {**host.config_dict()["services"], "stop": stop}
    host.write_config(services=services, verify_timeout="8s")


def test_a_swap_waits_for_an_old_server_still_shutting_down_after_stop_returned(lock_host):
    alice = lock_host.user("alice")
    lock_host.set_emulator(V2_CURRENT, stop_delay_s=2)      # a slow graceful shutdown, still owning the dir
    lock_host.service("stop", alice)
    lock_host.service("start", alice)
    no_wait_stop(lock_host)
    v = v2_nightly(1)
    lock_host.publish(v, migrations=56, **LOCKING)
    result = lock_host.t3track("run", "--json")
    doc = json.loads(result.stdout)
    assert result.returncode == 0 and doc["outcome"] == "swapped", result.stdout + result.stderr
    assert lock_host.serving(alice) == v
    waited = [n for n in doc["notes"] if "waited" in n]
    assert waited and waited[0].startswith("alice: waited ") and "for the old server (pid " in waited[0]
    run = next(e for e in reversed(lock_host.history()) if e["event"] == "run")
    assert run["outcome"] == "swapped"


def test_a_rollback_restores_the_database_and_never_touches_server_owner_sqlite(lock_host):
    alice = lock_host.user("alice")
    lock_file = alice.base_dir / "userdata" / "server-owner.sqlite"
    inode = lock_file.stat().st_ino
    v = v2_nightly(1)
    lock_host.publish(v, migrations=56, **LOCKING)
    assert lock_host.t3track("dry-run").returncode == 0
    lock_host.set_fault(v, "no-cookie-live")
    result = lock_host.t3track("run", "--json")
    assert result.returncode == 1 and json.loads(result.stdout)["outcome"] == "rolled_back", result.stdout
    assert lock_file.stat().st_ino == inode                  # the same file: never deleted or replaced
    assert not list(lock_file.parent.glob("server-owner.sqlite.*"))
    assert lock_host.serving(alice) == V2_CURRENT
    assert lock_host.max_migration(alice) == 55              # the database was restored all the same


def test_the_sandbox_copy_carries_neither_the_lock_file_nor_the_runtime_file(lock_host, monkeypatch, tmp_path):
    alice = lock_host.user("alice")
    live = alice.base_dir / "userdata"
    assert (live / "server-owner.sqlite").exists() and (live / "server-runtime.json").exists()
    v = v2_nightly(1)
    lock_host.publish(v, migrations=56, **LOCKING)
    assert lock_host.t3track("dry-run").returncode == 0       # installs it
    seen: list[set[str]] = []
    real_start = runner.start

    def start(argv, **kwargs):
        base = Path(argv[argv.index("--base-dir") + 1])
        seen.append(set(os.listdir(base / "userdata")))
        return real_start(argv, **kwargs)

    monkeypatch.setattr(runner, "start", start)
    config = lock_host.config()
    with sandbox.serve_candidate(config, config.user("alice"), executable_of(config, v), v,
                                 workdir=tmp_path / "sandboxes", evidence_dir=tmp_path / "evidence") as server:
        assert server.alive()
    assert seen and "statev2.sqlite" in seen[0]
    assert "server-owner.sqlite" not in seen[0] and "server-runtime.json" not in seen[0]


def test_a_locking_candidate_serves_a_sandbox_copied_from_a_host_whose_live_server_runs(host):
    # the live 0.0.42 servers publish server-runtime.json with their live pid and no ownerId: a copy of it
    # would make a locking candidate refuse the sandbox (T3_STATE_DIR_OWNED)
    assert (host.users[0].base_dir / "userdata" / "server-runtime.json").exists()
    host.publish(nightly(1), migrations=53, **LOCKING)
    result = host.t3track("dry-run", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert all(g["outcome"] == "pass" for g in json.loads(result.stdout)["gates"])
