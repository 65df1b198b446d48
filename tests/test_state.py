import json
import os
import stat
import subprocess
import sys
import textwrap

import pytest

from t3track.errors import LockBusy, StateError
from t3track.state import State, StateStore


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_state_is_written_private_and_atomically(tmp_path):
    store = StateStore(tmp_path / "state")
    store.save(State(current="0.0.42"))
    assert mode(store.dir) == 0o700
    assert mode(store.state_path) == 0o600
    assert json.loads(store.state_path.read_text())["current"] == "0.0.42"
    assert [p.name for p in store.dir.iterdir()] == ["state.json"]  # no temporary file left


def test_save_replaces_the_file_by_rename_not_in_place(tmp_path):
    store = StateStore(tmp_path)
    store.save(State(current="0.0.41"))
    before = store.state_path.stat().st_ino
    store.save(State(current="0.0.42"))
    assert store.state_path.stat().st_ino != before
    assert store.load().current == "0.0.42"


def test_corrupt_state_is_reported_and_never_replaced(tmp_path):
    store = StateStore(tmp_path)
    store.state_path.write_text("{not json")
    with pytest.raises(StateError) as info:
        store.load()
    assert "corrupt" in info.value.message and info.value.hint
    assert store.state_path.read_text() == "{not json"


def test_a_state_the_models_refuse_is_corrupt_and_one_they_coerce_is_read(tmp_path):
    store = StateStore(tmp_path)
    store.state_path.write_text(json.dumps({"current": "not a version"}))
    with pytest.raises(StateError, match="is corrupt"):
        store.load()
    store.state_path.write_text(json.dumps({"current": "0.0.42", "failures": {"0.0.42": "2"}}))
    assert store.load().failures == {"0.0.42": 2}  # the models' lax reading
    assert StateStore(tmp_path / "none").load().current is None


def test_history_is_append_only_and_read_newest_first(tmp_path):
    store = StateStore(tmp_path)
    store.record("freeze", by="ops", reason="a")
    store.record("unfreeze", by="ops")
    lines = store.history_path.read_text().splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["freeze", "unfreeze"]
    assert [e["event"] for e in store.history()] == ["unfreeze", "freeze"]
    assert [e["event"] for e in store.history(limit=1)] == ["unfreeze"]
    assert mode(store.history_path) == 0o600


def test_a_torn_last_history_line_is_skipped(tmp_path):
    store = StateStore(tmp_path)
    store.record("pin", by="ops", version="0.0.42")
    with open(store.history_path, "a") as handle:
        handle.write('{"at": "2026-')
    assert [e["event"] for e in store.history()] == ["pin"]


def test_a_second_process_is_refused_the_lock_with_the_holders_pid(tmp_path):
    store = StateStore(tmp_path)
    with store.lock():
        code = textwrap.dedent(f"""
            import sys
            from pathlib import Path
            from t3track.state import StateStore
            from t3track.errors import LockBusy
            try:
                with StateStore(Path({str(tmp_path)!r})).lock():
                    sys.exit(0)
            except LockBusy as exc:
                print(exc.holder_pid); sys.exit(exc.exit_code)
        """)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 75
    assert proc.stdout.strip() == str(os.getpid())
    with store.lock():  # released: taken again
        pass


def test_the_lock_is_not_reentrant_within_a_process(tmp_path):
    store = StateStore(tmp_path)
    with store.lock():
        with pytest.raises(LockBusy):
            with StateStore(tmp_path).lock():
                pass
