"""The gate runner: configured order, every user, first failure stops, evidence redacted, nothing left running."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from tests.real_t3 import (
    files_containing,
    host_config,
    live_base_dir,
    processes_mentioning,
)
from tests.support.confined import let_records_through
from tests.support.state import fake_live_state, script

from t3track.host import backup
from t3track.night.gates import run_gates
from t3track.results import to_jsonable

VERSION = "0.0.42"


def gates_of(results):  # noqa: ANN001, ANN201
    return [(r.user, r.name, r.outcome) for r in results]


def evidence_dir(config) -> Path:  # noqa: ANN001
    return config.state_dir / "evidence" / "run-1"


def nothing_left(config) -> None:  # noqa: ANN001
    workdir = config.state_dir / "sandboxes"
    assert not workdir.exists() or list(workdir.iterdir()) == []
    assert processes_mentioning(str(workdir)) == []


# ---------------------------------------------------------------- order and stopping


def test_a_missing_backup_fails_the_first_gate_and_nothing_else_runs(tmp_path):
    config = host_config(tmp_path, {"alice": fake_live_state(tmp_path / "alice")})
    results = run_gates(config, VERSION, tmp_path / "never-started", evidence_dir=evidence_dir(config))
    assert gates_of(results) == [("alice", "backup-present", "fail")]
    assert "t3track backup" in results[0].detail
    assert results[0].fingerprint == "backup-present:backup:-:NoFreshBackup"
    nothing_left(config)


def test_the_first_failing_user_stops_the_run_for_every_later_user(tmp_path):
    config = host_config(tmp_path, {"alice": fake_live_state(tmp_path / "alice"),
                                    "bob": fake_live_state(tmp_path / "bob")}, serve_timeout="2s")
    for user in config.users:
        backup.backup_user(config, user)
    crash = script(tmp_path, "import sys\nprint('cannot read state: no such column', flush=True)\nsys.exit(1)")
    results = run_gates(config, VERSION, crash, evidence_dir=evidence_dir(config))
    assert gates_of(results) == [("alice", "backup-present", "pass"), ("alice", "sandbox-serve", "fail")]
    nothing_left(config)


def test_a_crashing_candidate_fails_sandbox_serve_with_its_last_log_lines(tmp_path):
    config = host_config(tmp_path, {"alice": fake_live_state(tmp_path / "alice")})
    backup.backup_user(config, config.users[0])
    crash = script(tmp_path, "import sys\nprint('Error: migration 53_Renamed failed', flush=True)\nsys.exit(1)")
    results = run_gates(config, VERSION, crash, evidence_dir=evidence_dir(config))
    failed = results[-1]
    assert (failed.name, failed.outcome) == ("sandbox-serve", "fail")
    assert "exited with 1" in failed.detail and "migration 53_Renamed failed" in failed.detail
    assert failed.fingerprint == "sandbox-serve:exit:-:SandboxFailed"
    assert "migration 53_Renamed failed" in Path(failed.evidence).read_text()


def test_progress_reports_each_gate_as_it_starts_and_ends(tmp_path):
    config = host_config(tmp_path, {"alice": fake_live_state(tmp_path / "alice")})
    lines: list[str] = []
    run_gates(config, VERSION, tmp_path / "t3", evidence_dir=evidence_dir(config), progress=lines.append)
    assert lines[0] == f"alice: backup-present ({VERSION})"
    assert lines[1].startswith("alice: backup-present fail in ")


def test_an_invalid_candidate_version_is_refused_before_anything_runs(tmp_path):
    from t3track.errors import UsageError

    config = host_config(tmp_path, {"alice": fake_live_state(tmp_path / "alice")})
    with pytest.raises(UsageError):
        run_gates(config, "latest; rm -rf /", tmp_path / "t3", evidence_dir=evidence_dir(config))


# ---------------------------------------------------------------- the real server


@pytest.fixture
def real_host(tmp_path, real_state_template):  # noqa: F811
    def make(**gates):  # noqa: ANN003, ANN202
        config = host_config(tmp_path, {"alice": live_base_dir(real_state_template, tmp_path / "alice")}, **gates)
        backup.backup_user(config, config.users[0])
        return config
    return make


@pytest.mark.real_server
def test_the_real_candidate_passes_every_gate_on_a_real_backup(real_host, real_t3, secret_spy):  # noqa: F811
    config = real_host()
    results = run_gates(config, VERSION, real_t3, evidence_dir=evidence_dir(config))
    assert gates_of(results) == [("alice", "backup-present", "pass"), ("alice", "sandbox-serve", "pass"),
                                 ("alice", "pairing-probe", "pass")], [r.detail for r in results]
    serve = results[1]
    assert "migrations 52 -> 52" in serve.detail and serve.one_way == []
    probe_doc = json.loads(Path(results[2].evidence).read_text())
    assert probe_doc["exchange_path"] == "/api/auth/browser-session"
    last = probe_doc["steps"][-1]
    assert (last["name"], last["ok"], last["status"]) == ("one-time", True, 401)
    log = Path(serve.evidence)
    assert "T3 Code server is ready" in log.read_text()
    for path in evidence_dir(config).iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(secret_spy.values) >= 3  # startup token, minted credential, cookie value
    assert files_containing([config.state_dir], list(secret_spy.values)) == []
    assert not [v for v in secret_spy.values if v in json.dumps(to_jsonable(results))]
    nothing_left(config)


@pytest.mark.real_server
def test_sessions_paired_with_the_current_version_survive_the_same_version(real_host, real_t3, tmp_path):  # noqa: F811
    config = real_host(sessions_survive=True)
    prefix = real_t3.parents[3]  # <prefix>/node_modules/@t3code/t3-linux-x64/t3
    config = config.model_copy(update={"executable": str(real_t3.relative_to(prefix))})
    config.root.mkdir(parents=True)
    os.symlink(prefix, config.root / "current")
    results = run_gates(config, VERSION, real_t3, evidence_dir=evidence_dir(config))
    assert gates_of(results)[-1] == ("alice", "sessions-survive", "pass"), results[-1].detail
    assert (evidence_dir(config) / "alice.sandbox-current.log").is_file()
    nothing_left(config)


def test_sessions_survive_without_a_current_install_is_inconclusive_not_a_failure(tmp_path, monkeypatch):
    config = host_config(tmp_path, {"alice": fake_live_state(tmp_path / "alice")}, sessions_survive=True,
                         order=["backup-present"], serve_timeout="1s")
    backup.backup_user(config, config.users[0])
    hang = script(tmp_path, "import time\ntime.sleep(600)", name="t3-hang")
    results = run_gates(config, VERSION, hang, evidence_dir=evidence_dir(config))
    assert gates_of(results) == [("alice", "backup-present", "pass"), ("alice", "sessions-survive", "inconclusive")]
    assert "not checked" in results[-1].detail
    nothing_left(config)


# ---------------------------------------------------------------- the emulators


NEXT = "0.0.43-nightly.20261126.2901"


@pytest.fixture
def emulated_host(tmp_path):
    """A host whose alice has emulator state at `live_migrations`, backed up; candidates from make_install."""
    from tests.emulator.package import EXECUTABLE, make_install, make_user_state

    def make(live_migrations=52, current=None, serve_timeout="3s", **gates):  # noqa: ANN001, ANN003, ANN202
        make_user_state(tmp_path / "alice", migrations=live_migrations, rows=3)
        config = host_config(tmp_path, {"alice": tmp_path / "alice"}, serve_timeout=serve_timeout, **gates)
        config = config.model_copy(update={"executable": EXECUTABLE})
        if current is not None:  # (version, era, migrations) of the install `current` points at
            version, era, migrations = current
            make_install(config.root / "versions" / version, version, era=era, migrations=migrations)
            os.symlink(config.root / "versions" / version, config.root / "current")
        backup.backup_user(config, config.users[0])
        return config

    def candidate(version=NEXT, **kwargs):  # noqa: ANN001, ANN003, ANN202
        return make_install(tmp_path / "candidate", version, **kwargs)

    return make, candidate


def test_a_candidate_that_migrates_is_reported_one_way_with_the_migration_names(emulated_host, secret_spy):  # noqa: F811
    make, candidate = emulated_host
    config = make(live_migrations=52)
    results = run_gates(config, NEXT, candidate(migrations=54), evidence_dir=evidence_dir(config))
    assert [r.outcome for r in results] == ["pass", "pass", "pass"], [r.detail for r in results]
    serve = results[1]
    assert [name.split("_", 1)[0] for name in serve.one_way] == ["53", "54"]
    assert "migrations 52 -> 54; one-way: adds 53_" in serve.detail
    assert len(secret_spy.values) >= 3
    assert files_containing([config.state_dir], list(secret_spy.values)) == []
    nothing_left(config)


@pytest.mark.parametrize(("fault", "reason"), [
    ("crash-on-start", "exit"),
    ("never-ready", "timeout"),
    ("env-hangs", "timeout"),
    ("wrong-version", "wrong-version"),
])
def test_a_candidate_that_does_not_serve_fails_sandbox_serve(emulated_host, fault, reason):
    make, candidate = emulated_host
    config = make()
    results = run_gates(config, NEXT, candidate(fault=fault), evidence_dir=evidence_dir(config))
    assert gates_of(results) == [("alice", "backup-present", "pass"), ("alice", "sandbox-serve", "fail")]
    assert results[-1].fingerprint == f"sandbox-serve:{reason}:-:SandboxFailed"
    assert Path(results[-1].evidence).is_file()
    nothing_left(config)


def test_a_candidate_that_cannot_pair_fails_pairing_probe_with_the_step_in_its_fingerprint(emulated_host):
    make, candidate = emulated_host
    config = make()
    results = run_gates(config, NEXT, candidate(fault="renamed-endpoint"), evidence_dir=evidence_dir(config))
    failed = results[-1]
    assert (failed.name, failed.outcome) == ("pairing-probe", "fail")
    assert failed.fingerprint == "pairing-probe:exchange:404:HTTPStatus"
    assert "step exchange (HTTP 404)" in failed.detail
    nothing_left(config)


def test_a_candidate_whose_mint_fails_is_refused_though_its_startup_token_pairs(emulated_host):
    """Production servers' stdout goes nowhere: operators pair with `auth pairing create`, so a
    build that breaks it must fail the gate, never pass on the startup token."""
    make, candidate = emulated_host
    config = make()
    results = run_gates(config, NEXT, candidate(fault="mint-fails"), evidence_dir=evidence_dir(config))
    failed = results[-1]
    assert (failed.name, failed.outcome) == ("pairing-probe", "fail"), failed.detail
    assert failed.fingerprint == "pairing-probe:mint:-:MintFailed"
    probe_doc = json.loads(Path(failed.evidence).read_text())
    assert [s["name"] for s in probe_doc["steps"]] == ["session", "mint"]  # no exchange with any other credential
    assert "startup token" not in json.dumps(probe_doc)
    nothing_left(config)


@pytest.mark.parametrize("candidate_migrations", [54, 52])  # some to run, or none needed
def test_the_mint_opens_the_database_only_after_the_candidates_migrations(emulated_host, tmp_path, monkeypatch,
                                                                          candidate_migrations):
    """The mint migrates too, and two migrators on one database race: it runs once the candidate
    serves, and sees every migration the candidate made."""
    make, candidate = emulated_host
    config = make(live_migrations=52)
    record = let_records_through(monkeypatch, tmp_path) / "record.jsonl"  # the box writes nothing else
    results = run_gates(config, NEXT, candidate(migrations=candidate_migrations, env_record=str(record)),
                        evidence_dir=evidence_dir(config))
    assert [r.outcome for r in results] == ["pass", "pass", "pass"], [r.detail[:400] for r in results]
    opened = [json.loads(line) for line in record.read_text().splitlines()]
    opened = [line for line in opened if line["command"] == "auth pairing create: database opened"]
    assert [line["migrations"] for line in opened] == [list(range(1, candidate_migrations + 1))]
    mint = _mint_step(results)
    assert mint["ok"] and mint["detail"] == "minted with `auth pairing create`"
    nothing_left(config)


def _mint_step(results: list) -> dict:
    """The pairing probe's `mint` step, from its evidence."""
    return next(s for s in json.loads(Path(results[-1].evidence).read_text())["steps"] if s["name"] == "mint")


def test_a_session_wipe_on_upgrade_warns_that_everyone_pairs_again(emulated_host, secret_spy):  # noqa: F811
    make, candidate = emulated_host
    config = make(live_migrations=30, current=("0.0.24", "A", 30), sessions_survive=True)
    results = run_gates(config, NEXT, candidate(era="B", migrations=52), evidence_dir=evidence_dir(config))
    assert gates_of(results) == [("alice", "backup-present", "pass"), ("alice", "sandbox-serve", "pass"),
                                 ("alice", "pairing-probe", "pass"), ("alice", "sessions-survive", "inconclusive")]
    survive = results[-1]
    assert "every user will have to pair again" in survive.detail
    assert "31_AuthAuthorizationScopes" in survive.one_way
    assert files_containing([config.state_dir], list(secret_spy.values)) == []
    nothing_left(config)


def test_sessions_survive_an_upgrade_that_keeps_them(emulated_host):
    make, candidate = emulated_host
    config = make(live_migrations=52, current=("0.0.42", "B", 52), sessions_survive=True)
    results = run_gates(config, NEXT, candidate(migrations=53), evidence_dir=evidence_dir(config))
    assert gates_of(results)[-1] == ("alice", "sessions-survive", "pass"), results[-1].detail
    nothing_left(config)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as another user")
def test_gates_run_the_candidate_and_the_mint_as_run_as(emulated_host, tmp_path, monkeypatch):
    import shutil
    import tempfile

    from tests.emulator.package import make_install

    make, _ = emulated_host
    config = make()
    config = config.model_copy(update={"users": [config.users[0].model_copy(update={"run_as": "nobody"})]})
    shared = Path(tempfile.mkdtemp(prefix="t3track-test-install-"))  # tmp_path is private to root
    try:
        shared.chmod(0o755)
        (shared / "tmp").mkdir(mode=0o755)
        monkeypatch.setattr(tempfile, "tempdir", str(shared / "tmp"))  # where the sandbox falls back to
        executable = make_install(shared / "candidate", NEXT)
        results = run_gates(config, NEXT, executable, evidence_dir=evidence_dir(config))
        assert [r.outcome for r in results] == ["pass", "pass", "pass"], [r.detail for r in results]
        assert "not reachable by nobody" in results[1].detail  # state_dir is private: the sandbox moved
        log = Path(results[1].evidence).read_text()
        assert "Listening on" in log
        assert processes_mentioning(str(shared)) == []
        assert list((shared / "tmp").iterdir()) == []
    finally:
        shutil.rmtree(shared)


def test_pairing_probe_without_sandbox_serve_starts_the_sandbox_itself(emulated_host):
    make, candidate = emulated_host
    config = make(order=["pairing-probe"])
    results = run_gates(config, NEXT, candidate(), evidence_dir=evidence_dir(config))
    assert gates_of(results) == [("alice", "pairing-probe", "pass")], results[0].detail
    assert "Listening on" in (evidence_dir(config) / "alice.sandbox-serve.log").read_text()
    nothing_left(config)
