"""An inert rehearsal, the copy's part (t3code-contract.md, "Agents, and what a copy can do"): a user
whose settings, rows and secrets turn on every way a server acts on the world at boot gets a sandbox
copy with each of them off, and the live tree stays byte-identical."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from tests.real_t3 import host_config
from tests.support.state import fake_live_state

from t3track.host import backup, inert, sandbox
from t3track.host.sandbox import SandboxFailed, serve_candidate

EVERYTHING_ON = {
    "continueThreadsAfterServerUpdate": True,
    "autoResumeLimitedThreads": True,
    "defaultAutoPull": True,
    "enableProviderUpdateChecks": True,
    "providers": {"codex": {"enabled": True, "binaryPath": "codex"}, "claudeAgent": {"enabled": True},
                  "someNewAgent": {"enabled": True}},
    "providerInstances": {"work-codex": {"provider": "codex", "enabled": True}},
    "projectSettingsOverrides": {"p1": {"continueThreadsAfterServerUpdate": True, "autoPull": True}},
    "projectAutoPullOverrides": {"p1": True},
    "storageCleanup": {"enabled": True, "rules": [{"kind": "worktrees", "enabled": True, "olderThanDays": 7}]},
    "observability": {"otlpTracesUrl": "http://collector.example:4318/v1/traces",
                      "otlpMetricsUrl": "http://collector.example:4318/v1/metrics"},
    "theme": "dark",
}
CLOUD_SECRETS = ("cloud-cli-desired-link.bin", "cloud-cli-oauth-token.bin", "cloud-relay-token.bin",
                 "cloud-link-ed25519-key-pair.bin")


def busy_rows(db: sqlite3.Connection) -> None:
    """The rows that make a server act at boot: a continuation marker, a project with auto-pull, an
    enabled scheduled task, effects queued and running (V2 tables; 0.0.42 has only the first two)."""
    db.executescript("""
        CREATE TABLE provider_session_runtime (thread_id TEXT PRIMARY KEY, resume_cursor_json TEXT,
                                               runtime_payload_json TEXT);
        INSERT INTO provider_session_runtime VALUES
            ('t1', '{"cursor": 1}', '{"continueAfterServerUpdate": true, "model": "gpt"}'),
            ('t2', '{"cursor": 2}', '{"model": "claude"}');
        CREATE TABLE projection_projects (project_id TEXT PRIMARY KEY, workspace_root TEXT, auto_pull INTEGER);
        INSERT INTO projection_projects VALUES ('p1', '/home/alice/src/app', 1), ('p2', '/home/alice/src/lib', 0);
        CREATE TABLE scheduled_tasks (task_id TEXT PRIMARY KEY, enabled INTEGER);
        INSERT INTO scheduled_tasks VALUES ('nightly-review', 1);
        CREATE TABLE orchestration_v2_effect_outbox (effect_id TEXT PRIMARY KEY, kind TEXT, status TEXT);
        INSERT INTO orchestration_v2_effect_outbox VALUES ('e1', 'provider-turn.start', 'pending'),
            ('e2', 'checkpoint.revert', 'running'), ('e3', 'git.ref', 'done');
    """)
    db.commit()


@pytest.fixture
def busy_user(tmp_path):
    base = fake_live_state(tmp_path / "alice")
    userdata = base / "userdata"
    (userdata / "settings.json").write_text(json.dumps(EVERYTHING_ON))
    for name in CLOUD_SECRETS:
        (userdata / "secrets" / name).write_bytes(b"cloud" * 8)
    (userdata / "secrets" / "server-signing-key.bin").write_bytes(b"s" * 32)
    with sqlite3.connect(userdata / "state.sqlite") as db:
        busy_rows(db)
    config = host_config(tmp_path, {"alice": base})
    backup.backup_user(config, config.users[0])
    return config


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def the_copy(config, monkeypatch) -> dict:  # noqa: ANN001
    """The sandbox copy as the candidate would find it (the start is replaced: nothing runs)."""
    seen: dict = {}

    def look(server, executable, expected_version, **kwargs):  # noqa: ANN001, ANN003, ANN202
        userdata = server.userdata
        seen["settings"] = json.loads((userdata / "settings.json").read_text())
        seen["secrets"] = sorted(p.name for p in (userdata / "secrets").iterdir())
        with sqlite3.connect(userdata / "state.sqlite") as db:
            for key, query in (("markers", "SELECT thread_id, runtime_payload_json FROM provider_session_runtime"),
                               ("cursors", "SELECT thread_id, resume_cursor_json FROM provider_session_runtime"),
                               ("auto_pull", "SELECT project_id, auto_pull FROM projection_projects"),
                               ("tasks", "SELECT task_id, enabled FROM scheduled_tasks"),
                               ("outbox", "SELECT effect_id, status FROM orchestration_v2_effect_outbox")):
                try:
                    seen[key] = dict(db.execute(query))
                except sqlite3.OperationalError:
                    pass  # a state without that table
        seen["notes"] = list(server.notes)
        raise SandboxFailed("stop here", reason="exit")

    monkeypatch.setattr(sandbox, "_start", look)
    live = config.users[0].base_dir / "userdata"
    before = snapshot(live)
    with pytest.raises(SandboxFailed):
        serve_candidate(config, config.users[0], Path("/nonexistent/t3"), "0.0.42",
                        workdir=config.state_dir / "sandboxes", evidence_dir=config.state_dir / "evidence")
    assert snapshot(live) == before  # the live tree is never touched
    return seen


def test_every_setting_that_acts_on_the_world_is_off_in_the_copy(busy_user, monkeypatch):
    settings = the_copy(busy_user, monkeypatch)["settings"]
    for key in ("continueThreadsAfterServerUpdate", "autoResumeLimitedThreads", "defaultAutoPull",
                "enableProviderUpdateChecks"):
        assert settings[key] is False, key
    # every provider present and every one the contract knows, whether or not the user has it
    assert {name: entry["enabled"] for name, entry in settings["providers"].items()} == dict.fromkeys(
        ["codex", "claudeAgent", "someNewAgent", "cursor", "grok", "opencode"], False)
    assert settings["providers"]["codex"]["binaryPath"] == "codex"  # the rest is the user's
    assert settings["providerInstances"]["work-codex"]["enabled"] is False
    assert settings["projectSettingsOverrides"]["p1"] == {"continueThreadsAfterServerUpdate": False, "autoPull": False,
                                                          "defaultAutoPull": False, "autoResumeLimitedThreads": False}
    assert settings["projectAutoPullOverrides"] == {}
    assert settings["storageCleanup"] == {"enabled": False, "rules": [
        {"kind": "worktrees", "enabled": False, "olderThanDays": 7}]}
    assert settings["observability"] == {"otlpTracesUrl": "", "otlpMetricsUrl": ""}
    assert settings["theme"] == "dark"


def test_the_copy_carries_no_t3_connect_secret_but_keeps_the_signing_key(busy_user, monkeypatch):
    seen = the_copy(busy_user, monkeypatch)
    assert seen["secrets"] == ["server-signing-key.bin", "session-signing.bin"]
    assert any("T3 Connect secrets not copied: cloud-cli-desired-link.bin" in note for note in seen["notes"])


def test_continuation_markers_auto_pull_scheduled_tasks_and_queued_effects_are_off_in_the_copy(busy_user, monkeypatch):
    seen = the_copy(busy_user, monkeypatch)
    assert seen["markers"] == {"t1": '{"model":"gpt"}', "t2": '{"model": "claude"}'}
    assert seen["cursors"] == {"t1": '{"cursor": 1}', "t2": '{"cursor": 2}'}  # only the marker goes
    assert seen["auto_pull"] == {"p1": 0, "p2": 0}
    assert seen["tasks"] == {"nightly-review": 0}
    assert seen["outbox"] == {"e1": "cancelled", "e2": "cancelled", "e3": "done"}
    assert ("state.sqlite: off 1 continuation markers, 1 project auto-pulls, 1 scheduled tasks, 2 queued effects"
            in seen["notes"])


def test_a_user_without_settings_gets_inert_ones_not_the_builds_defaults(tmp_path, monkeypatch):
    base = fake_live_state(tmp_path / "alice")
    (base / "userdata" / "settings.json").unlink()
    config = host_config(tmp_path, {"alice": base})
    backup.backup_user(config, config.users[0])
    settings = the_copy(config, monkeypatch)["settings"]
    assert settings["continueThreadsAfterServerUpdate"] is False and settings["providers"]["codex"] == {"enabled": False}


@pytest.mark.parametrize("raw", [b"[1, 2]", b"{not json", b"null"])
def test_settings_that_are_not_an_object_are_replaced_by_inert_ones(raw):
    text, note = inert.inert_settings(raw)
    doc = json.loads(text)
    assert doc["continueThreadsAfterServerUpdate"] is False and doc["providers"]["claudeAgent"] == {"enabled": False}
    assert note is not None and "inert" in note


def test_a_setting_of_another_type_is_left_as_it_is_so_the_build_can_still_decode_the_file():
    text, _ = inert.inert_settings(json.dumps({"defaultAutoPull": "sometimes", "providers": {"codex": "on"}}).encode())
    doc = json.loads(text)
    assert doc["defaultAutoPull"] == "sometimes" and doc["providers"]["codex"] == "on"


def test_a_statev2_database_is_made_inert_too_and_tables_a_build_lacks_are_skipped(tmp_path):
    userdata = tmp_path / "userdata"
    userdata.mkdir()
    with sqlite3.connect(userdata / "statev2.sqlite") as db:
        busy_rows(db)
    with sqlite3.connect(userdata / "state.sqlite") as db:  # 0.0.42-like: no scheduled tasks, no outbox
        db.execute("CREATE TABLE projection_projects (project_id TEXT, auto_pull INTEGER)")
        db.execute("INSERT INTO projection_projects VALUES ('p1', 1)")
    notes = inert.inert_databases(userdata)
    assert notes == ["statev2.sqlite: off 1 continuation markers, 1 project auto-pulls, 1 scheduled tasks, "
                     "2 queued effects", "state.sqlite: off 1 project auto-pulls"]
    with sqlite3.connect(userdata / "statev2.sqlite") as db:
        assert db.execute("SELECT count(*) FROM orchestration_v2_effect_outbox WHERE status IN ('pending', 'running')"
                          ).fetchone() == (0,)
