"""One user's odd tree, or a disk too small, on a whole night (the emulated host, `t3track run`):
exit 3 naming what to fix, no server stopped, the candidate not held responsible."""

import json
import os
import subprocess

import pytest
from tests.support.host import nightly

pytestmark = pytest.mark.slow


def test_a_fifo_in_one_users_secrets_is_exit_3_and_never_counts_against_the_candidate(host):
    v = nightly(1)
    host.publish(v)
    alice = host.users[0]
    os.mkfifo(alice.base_dir / "userdata" / "secrets" / "trap.bin")
    pids = host.server_pids()
    for _night in range(3):  # three nights used to deny a good nightly for every user
        result = host.t3track("run", "--json")
        assert result.returncode == 3, result.stdout + result.stderr
        doc = json.loads(result.stdout)
        assert alice.name in doc["reason"] and "FIFO" in doc["reason"]
    state = host.state()
    assert state.get("failures", {}).get(v) is None
    assert not any(d["version"] == v for d in state.get("denied", []))
    assert host.server_pids() == pids and host.current_target() == "versions/0.0.42"


def test_a_state_dir_too_small_for_the_snapshots_is_exit_3_with_every_server_still_up(host):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    v = nightly(1)
    host.publish(v)
    for user in host.users:
        conn = __import__("sqlite3").connect(user.db)
        conn.execute("CREATE TABLE IF NOT EXISTS padding (b BLOB)")
        conn.execute("INSERT INTO padding VALUES (randomblob(3000000))")
        conn.commit()
        conn.close()
    assert host.t3track("backup").returncode == 0
    host.write_config(gates={"order": ["backup-present"]})
    saved = host.state_dir.with_name("state.saved")
    subprocess.run(["cp", "-a", str(host.state_dir), str(saved)], check=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(host.state_dir)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        subprocess.run(["cp", str(saved / "state.json"), str(host.state_dir / "state.json")], check=True)
        pids = host.server_pids()
        result = host.t3track("run", "--json")
        assert result.returncode == 3, result.stdout + result.stderr
        assert "nothing was stopped" in json.loads(result.stdout)["reason"]
        assert host.server_pids() == pids
        for user in host.users:
            assert host.serving(user) == "0.0.42"
        assert not (host.state_dir / "journal.json").exists()
    finally:
        subprocess.run(["umount", "-l", str(host.state_dir)], capture_output=True)
