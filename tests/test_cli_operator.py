"""The operator commands, run through the real CLI against a temporary state_dir."""

import json
import os
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from tests.support.host import REPO
from typer.testing import CliRunner

from t3track.cli import app
from t3track.state import Freeze, State, StateStore


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    path.write_text(f"""
root: {tmp_path / 'root'}
registry: http://127.0.0.1:9/
state_dir: {tmp_path / 'state'}
backup_dir: {tmp_path / 'backups'}
users:
  - {{name: alice, base_dir: {tmp_path / 'alice'}, port: 3773}}
""")
    monkeypatch.setenv("T3TRACK_CONFIG", str(path))
    monkeypatch.setenv("SUDO_USER", "opsperson")
    return tmp_path


def t3(*args):
    result = CliRunner().invoke(app, list(args))
    return result


def t3track_process(*argv):
    """`python -m t3track ARGV` as a real process, with no $T3TRACK_CONFIG."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src") + os.pathsep + str(REPO), COLUMNS="120")
    env.pop("T3TRACK_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "t3track", *argv], capture_output=True, text=True, env=env,
                          timeout=120)


def history(tmp_path):
    return [json.loads(line) for line in (tmp_path / "state" / "history.jsonl").read_text().splitlines()]


def test_help_lists_every_command_of_the_spec_and_the_exit_codes():
    out = t3("--help").output
    for name in ["run", "dry-run", "status", "history", "freeze", "unfreeze", "pin", "unpin", "deny", "allow",
                 "adopt", "revert", "backup", "probe", "config"]:
        assert f"  {name} " in out or f"  {name}\n" in out, name
    lines = [line.strip() for line in out.splitlines()]
    for code, words in [("0", "done"), ("1", "refused"), ("2", "usage or config error"), ("3", "environment error"),
                        ("4", "critical"), ("75", "another t3track run holds the lock")]:
        assert any(line.startswith(f"{code}  {words}") for line in lines), code


def test_freeze_records_who_why_and_until(cfg):
    assert t3("freeze", "--reason", "holiday week", "--for", "7d").exit_code == 0
    state = json.loads((cfg / "state" / "state.json").read_text())
    assert state["frozen"]["reason"] == "holiday week" and state["frozen"]["by"] == "opsperson"
    until = datetime.fromisoformat(state["frozen"]["until"].replace("Z", "+00:00"))
    assert timedelta(days=6, hours=23) < until - datetime.now(UTC) <= timedelta(days=7)
    assert history(cfg)[-1]["event"] == "freeze" and history(cfg)[-1]["by"] == "opsperson"
    assert stat.S_IMODE((cfg / "state" / "state.json").stat().st_mode) == 0o600


def test_a_second_freeze_says_what_it_replaced_and_keeps_its_end(cfg):
    assert t3("freeze", "--reason", "holiday", "--until", "2099-01-01").exit_code == 0
    again = t3("freeze", "--reason", "holiday, and a migration")
    assert again.exit_code == 0
    assert "replaced the freeze by opsperson" in again.output and "until 2099-01-01T00:00:00Z: holiday" in again.output
    assert "its end is kept" in again.output and "undo: t3track unfreeze" in again.output
    state = json.loads((cfg / "state" / "state.json").read_text())
    assert state["frozen"]["reason"] == "holiday, and a migration" and state["frozen"]["until"].startswith("2099-01-01")
    assert history(cfg)[-1]["replaced"] == "opsperson: holiday"


def test_pin_with_the_registry_unreachable_is_accepted_with_a_warning(cfg):
    result = t3("pin", "0.0.43", "--reason", "offline")
    assert result.exit_code == 0
    assert "the registry could not be asked whether it has 0.0.43" in result.output
    assert "undo: t3track unpin" in result.output
    assert json.loads(t3("status", "--json").output)["pinned"]["version"] == "0.0.43"


def test_deny_says_how_to_undo_it(cfg):
    result = t3("deny", "0.0.43-nightly.20261101.3001", "--reason", "breaks pairing")
    assert "undo: t3track allow 0.0.43-nightly.20261101.3001" in result.output


def test_freeze_with_both_for_and_until_is_a_usage_error_and_changes_nothing(cfg):
    result = t3("freeze", "--reason", "x", "--for", "1d", "--until", "2030-01-01")
    assert result.exit_code == 2
    assert not (cfg / "state" / "state.json").exists()


def test_an_expired_freeze_is_not_shown_as_frozen(cfg):
    store = StateStore(cfg / "state")
    past = datetime.now(UTC) - timedelta(hours=2)
    store.save(State(frozen=Freeze(reason="old", by="x", at=past, until=past + timedelta(hours=1))))
    doc = json.loads(t3("--json", "status").output)
    assert doc["frozen"] is None


def test_unfreeze_lifts_and_records(cfg):
    t3("freeze", "--reason", "x")
    assert t3("unfreeze").exit_code == 0
    assert json.loads((cfg / "state" / "state.json").read_text())["frozen"] is None
    assert history(cfg)[-1]["event"] == "unfreeze"


def test_pin_and_unpin(cfg):
    assert t3("pin", "0.0.42", "--reason", "known good").exit_code == 0
    doc = json.loads(t3("status", "--json").output)
    assert doc["pinned"]["version"] == "0.0.42" and doc["pinned"]["reason"] == "known good"
    assert t3("unpin").exit_code == 0
    assert json.loads(t3("status", "--json").output)["pinned"] is None
    assert [e["event"] for e in history(cfg)] == ["pin", "unpin"]


@pytest.mark.parametrize("bad", ["1.0; rm -rf /", "latest", "v1"])
def test_bad_versions_are_refused_with_exit_2_and_nothing_written(cfg, bad):
    for args in (["pin", bad, "--reason", "x"], ["deny", bad, "--reason", "x"], ["allow", bad]):
        result = t3(*args)
        assert result.exit_code == 2
        assert "not a valid SemVer version" in result.output
    assert not (cfg / "state").exists()


def test_deny_and_allow(cfg):
    assert t3("deny", "0.0.43-nightly.20261101.3001", "--reason", "breaks pairing").exit_code == 0
    doc = json.loads(t3("status", "--json").output)
    assert doc["denied"][0]["version"] == "0.0.43-nightly.20261101.3001"
    assert doc["denied"][0]["reason"] == "breaks pairing"
    assert t3("allow", "0.0.43-nightly.20261101.3001").exit_code == 0
    assert json.loads(t3("status", "--json").output)["denied"] == []


def test_status_json_has_the_fields_of_the_spec(cfg):
    doc = json.loads(t3("status", "--json").output)
    for key in ["current", "previous", "channel", "pinned", "frozen", "denied", "last_run", "installed", "users"]:
        assert key in doc
    assert doc["users"] == [{"name": "alice", "port": 3773, "backup_age_s": None, "backup": None,
                             "database": None, "migration": None, "serving": None, "drift": False}]


def test_status_of_a_managed_host_takes_its_options_before_or_after_the_command(host):
    config = str(host.config_path)
    assert host.t3track("pin", "0.0.42", "--reason", "a test pin").returncode == 0
    for argv in (["--config", config, "status"], ["-c", config, "--json", "status"],
                 [f"--config={config}", "status", "--json"], ["-c", "/nowhere.yaml", "-c", config, "status"]):
        done = t3track_process(*argv)
        assert done.returncode == 0, (argv, done.stderr)
    doc = json.loads(t3track_process("--config", config, "status", "--json").stdout)
    assert doc["current"] == "0.0.42" and doc["pinned"]["reason"] == "a test pin"
    assert [u["name"] for u in doc["users"]] == ["alice", "bob"]


def test_status_without_a_readable_config_exits_2_saying_why(tmp_path):
    done = t3track_process("--config", str(tmp_path / "missing.yaml"), "status")
    assert done.returncode == 2 and "does not exist" in done.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("users: [\n")
    done = t3track_process("--config", str(broken), "--json", "status")
    assert done.returncode == 2 and json.loads(done.stdout)["exit_code"] == 2


def test_history_json_newest_first_with_limit(cfg):
    t3("freeze", "--reason", "a")
    t3("unfreeze")
    t3("pin", "0.0.42", "--reason", "b")
    doc = json.loads(t3("history", "-n", "2", "--json").output)
    assert [e["event"] for e in doc["events"]] == ["pin", "unfreeze"]


def test_operator_change_while_a_run_holds_the_lock_exits_75(cfg):
    store = StateStore(cfg / "state")
    with store.lock():
        result = t3("freeze", "--reason", "x")
    assert result.exit_code == 75
    assert "`t3track stop`" in result.output and "`systemctl stop t3track.service`" in result.output


def test_corrupt_state_exits_4_and_is_left_alone(cfg):
    (cfg / "state").mkdir(mode=0o700)
    (cfg / "state" / "state.json").write_text("garbage")
    result = t3("status")
    assert result.exit_code == 4
    assert "corrupt" in result.output
    assert (cfg / "state" / "state.json").read_text() == "garbage"


def test_bad_config_lists_every_problem_and_exits_2(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("users:\n  - {name: alice, base_dir: /a, port: 70000}\nfoo: 1\n")
    result = t3("--config", str(path), "config", "check")
    assert result.exit_code == 2
    assert "users[0].port" in result.output and "foo: unknown key" in result.output


def test_config_check_lists_host_problems(cfg):
    result = t3("config", "check", "--json")
    assert result.exit_code == 2
    doc = json.loads(result.output)
    assert any("users[0].base_dir" in p for p in doc["problems"])


def test_config_check_on_a_new_host_accepts_users_with_no_state_yet(cfg):
    (cfg / "alice").mkdir()  # provisioned, nobody has served T3 here, nothing adopted yet
    result = t3("config", "check", "--json")
    assert json.loads(result.output)["problems"] == [] and result.exit_code == 0, result.output
    (cfg / "root" / "versions" / "0.0.42").mkdir(parents=True)
    (cfg / "root" / "current").symlink_to("versions/0.0.42")  # adopted: now a missing database is a problem
    doc = json.loads(t3("config", "check", "--json").output)
    assert any("no userdata/state.sqlite" in p and "systemctl status t3@alice.service" in p for p in doc["problems"])


def test_status_on_a_new_host_says_adopt_comes_first_not_a_backup_that_would_fail(cfg):
    result = t3("status")
    assert result.exit_code == 0, result.output
    assert "run `t3track adopt VERSION`" in result.output
    assert "t3track backup" not in result.output  # nobody has served T3 here: nothing to back up yet


def test_a_bug_exits_4_with_a_redacted_traceback_and_no_locals(cfg, monkeypatch):
    from t3track.commands import status as ops

    def broken(config, store):
        cookie = "t3_session_3773_abcd=SECRETCOOKIEVALUE1234"  # a local a pretty traceback would show
        raise RuntimeError(f"boom Token: ABCDEFGH2345 {cookie}")

    monkeypatch.setattr(ops, "status", broken)
    result = t3("status")
    assert result.exit_code == 4
    assert "internal error: RuntimeError" in result.output
    assert "ABCDEFGH2345" not in result.output and "SECRETCOOKIEVALUE1234" not in result.output


def test_config_check_warns_of_metrics_nobody_reads_and_a_registry_nobody_reaches(cfg):
    (cfg / "alice").mkdir()
    doc = json.loads(t3("config", "check", "--json").output)
    assert any(w.startswith("metrics_path: not set") and "no alert can fire" in w for w in doc["warnings"]), doc
    assert any(w.startswith("registry: ") and "127.0.0.1:9" in w for w in doc["warnings"]), doc
    config = cfg / "config.yaml"
    config.write_text(config.read_text() + "metrics_path: /nonexistent/textfile/t3track.prom\n")
    doc = json.loads(t3("config", "check", "--json").output)
    assert any(w.startswith("metrics_path: /nonexistent/textfile does not exist") for w in doc["warnings"]), doc
    assert doc["problems"] == []  # warnings: the night itself can still run


def test_tables_on_an_80_column_terminal_never_cut_a_version(monkeypatch, capsys):
    from t3track.cli.render import Out

    monkeypatch.setattr(Out, "rich", property(lambda self: True))
    monkeypatch.setenv("COLUMNS", "80")
    versions = ["0.0.43-nightly.20261103.3002", "0.0.43-nightly.20261104.3003"]
    Out(False).table("denied", ["version", "gate", "at", "reason"],
                     [[v, "live-verify", "2026-11-04T03:12:00Z", "failed its live check for alice: " + "x " * 40]
                      for v in versions])
    shown = capsys.readouterr().out
    assert all(v in shown for v in versions), shown
    assert max(len(line) for line in shown.splitlines()) <= 80


def test_config_show_fills_every_default_and_names_no_notification_token(cfg):
    config = cfg / "config.yaml"
    config.write_text(config.read_text() + "notify:\n  urls: ['ntfys://ntfy.example/S3CRET-topic']\n"
                      "  webhook: https://hooks.example/services/S3CRET\n")
    doc = json.loads(t3("config", "show", "--json").output)
    assert doc["gates"]["serve_timeout"] and doc["verify_timeout"] and doc["keep_versions"] == 3
    assert doc["notify"]["urls"] == ["apprise #1 (ntfys://)"] and doc["notify"]["on"][0] == "refused"
    text = t3("config", "show").output
    assert "S3CRET" not in text + json.dumps(doc) and "min_release_age:" in text


def test_deny_of_a_rings_current_version_names_the_ring_and_its_revert(cfg):
    (cfg / "state").mkdir(mode=0o700)
    (cfg / "state" / "state.json").write_text(json.dumps(
        {"current": "0.0.43", "rings": {"everyone": {"current": "0.0.42"}}}))
    result = t3("deny", "0.0.42", "--reason", "x")
    assert result.exit_code == 2
    assert "0.0.42 is the current version of ring everyone" in result.output
    assert "`t3track revert --ring everyone` leaves it" in result.output
    assert json.loads((cfg / "state" / "state.json").read_text()).get("denied", []) == []
