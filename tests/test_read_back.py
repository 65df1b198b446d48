"""What t3track reads back (state.json, the journal, history, the config's odd corners) is held to the
CLI's rules: a bad value is a clear error or a skipped line, never a traceback, never a path."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tests.support.tags import TagsOnly

from t3track import runner
from t3track.commands import control
from t3track.config import parse_config
from t3track.errors import ConfigError, CriticalError, EnvironmentFault, StateError, UsageError
from t3track.host import sandbox, tree
from t3track.night import journal as jr
from t3track.night import policy
from t3track.state import State, StateStore

NIGHTLY = "0.0.43-nightly.20261201.3001"


def write_state(store: StateStore, doc: object) -> None:
    store.dir.mkdir(parents=True, exist_ok=True)
    store.state_path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)


def test_a_300_digit_nightly_is_refused_not_followed(tmp_path):
    config = parse_config({"state_dir": str(tmp_path)})
    tag = "0.0.43-nightly.20261201." + "9" * 300
    decision = policy.resolve(config, State(current="0.0.42"), TagsOnly(tag), datetime.now(UTC))
    assert decision.action == "refused" and "not a SemVer version" in decision.reason
    assert len(decision.reason) < 300


@pytest.mark.parametrize("doc", [
    "[" * 100_000 + "]" * 100_000,                              # nested too deep for json
    {"current": "versions/../../../../tmp"},                    # a path, not a version
    {"current": "0.0.42", "denied": [{"version": "../x", "reason": "r", "at": "2026-12-01T00:00:00Z"}]},
    {"current": "0.0.42", "first_seen": {"$(reboot)": "2026-12-01T00:00:00Z"}},
])
def test_a_state_file_that_breaks_the_rules_is_a_state_error(tmp_path, doc):
    store = StateStore(tmp_path / "state")
    write_state(store, doc)
    with pytest.raises(StateError):
        store.load()


def test_a_freeze_until_utc_cannot_hold_is_refused_and_an_old_one_still_loads(tmp_path):
    store = StateStore(tmp_path / "state")
    with pytest.raises(UsageError):
        control.freeze(store, reason="far", until="9999-12-31T23:00:00-14:00")
    write_state(store, {"current": "0.0.42", "frozen": {"reason": "r", "by": "op", "at": "2026-12-01T00:00:00Z",
                                                        "until": "9999-12-31T23:00:00-14:00"}})
    state = store.load()
    assert state.frozen is not None and state.frozen.until.tzinfo is not None
    assert not state.frozen.expired(datetime.now(UTC))
    store.save(state)
    assert store.load().frozen is not None


def test_a_non_utf8_or_non_object_history_line_is_skipped(tmp_path):
    store = StateStore(tmp_path / "state")
    store.record("freeze", by="op", reason="first")
    with open(store.history_path, "ab") as handle:
        handle.write(b"\xff\xfe not utf-8\n[1, 2]\n42\n\"text\"\n" + b"[" * 50_000 + b"\n")
    store.record("unfreeze", by="op")
    assert [e["event"] for e in store.history()] == ["unfreeze", "freeze"]


def test_a_journal_naming_a_path_for_a_version_is_refused(tmp_path):
    store = StateStore(tmp_path / "state")
    store.dir.mkdir(parents=True)
    now = "2026-12-01T00:00:00Z"
    good = {"run_id": "r1", "kind": "swap", "from_version": "0.0.42", "to_version": NIGHTLY, "phase": "flipped",
            "snapshot_dir": str(store.snapshot_dir("r1")), "started_at": now, "updated_at": now}
    store.journal_path.write_text(json.dumps(good))
    assert jr.read(store).to_version == NIGHTLY
    for bad in ({"to_version": "../../../../tmp"}, {"snapshot_dir": "/home/alice"}, {"kind": "rm -rf"}):
        store.journal_path.write_text(json.dumps({**good, **bad}))
        with pytest.raises(CriticalError):
            jr.read(store)


def test_current_is_never_pointed_at_a_path(tmp_path):
    config = parse_config({"root": str(tmp_path / "root"), "state_dir": str(tmp_path / "state")})
    (tmp_path / "tmp").mkdir()
    (tmp_path / "root" / "versions").mkdir(parents=True)
    with pytest.raises(CriticalError):
        tree.flip_current(config, "../../tmp")
    assert not (tmp_path / "root" / "current").exists()


@pytest.mark.parametrize("data, where", [
    ({"gates": {"order": []}}, "gates.order"),
    ({"gates": {"serve_timeout": "99999999999999d"}}, "gates.serve_timeout"),
    ({"verify_timeout": 10 ** 30}, "verify_timeout"),
    ({"services": {"stop": ["systemctl", "stop", "t3@{nokey}.service"]}}, "services.stop"),
    ({"services": {"start": ["echo", "{user.__class__}"]}}, "services.start"),
])
def test_config_values_that_would_break_a_night_are_config_errors(data, where):
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert any(p.startswith(where) for p in caught.value.problems), caught.value.problems


def test_run_as_naming_a_missing_user_is_an_environment_error(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("run_as only applies as root")
    with pytest.raises(EnvironmentFault) as caught:
        runner.start([sys.executable, "-c", "pass"], run_as="t3h_nobody_there")
    assert "t3h_nobody_there" in caught.value.message
    with pytest.raises(EnvironmentFault):
        runner.run([sys.executable, "-c", "pass"], timeout=5, run_as="t3h_nobody_there")


def test_an_existing_shared_state_dir_keeps_its_mode(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    store = StateStore(shared)
    store.record("freeze", by="op", reason="r")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o755
    assert stat.S_IMODE(store.history_path.stat().st_mode) == 0o600
    fresh = StateStore(tmp_path / "fresh" / "state")
    fresh.ensure()
    assert stat.S_IMODE(fresh.dir.stat().st_mode) == 0o700


def test_a_sandbox_left_in_the_system_temp_dir_is_swept_with_its_server(tmp_path):
    workdir = tmp_path / "state" / "sandboxes"
    workdir.mkdir(parents=True)
    stale = Path(tempfile.mkdtemp(prefix=sandbox._prefix("alice", workdir)))
    other = Path(tempfile.mkdtemp(prefix=sandbox._prefix("alice", tmp_path / "another-host")))
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "--base-dir", str(stale / "base")],
                              process_group=0)
    try:
        deadline = time.monotonic() + 10
        while str(stale).encode() not in Path(f"/proc/{orphan.pid}/cmdline").read_bytes():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        swept = sandbox.sweep_stale(workdir, ("alice",))
        assert swept == [stale.name]
        assert orphan.wait(timeout=10) != 0
        assert not stale.exists() and other.exists()  # another t3track's sandbox is not ours
    finally:
        if orphan.poll() is None:
            orphan.kill()
        import shutil

        shutil.rmtree(other, ignore_errors=True)
        shutil.rmtree(stale, ignore_errors=True)
