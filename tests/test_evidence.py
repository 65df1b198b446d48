"""Evidence of each run: result.json, run.log, pruning by age, and `t3track show RUN-ID`."""

import json
import os
import stat
from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

from t3track.aftermath import evidence
from t3track.cli import app
from t3track.config import parse_config
from t3track.errors import UsageError
from t3track.night.report import NightReport
from t3track.results import GateResult, Outcome
from t3track.state import Denial, LastRun, State, StateStore

NOW = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def store(tmp_path):
    return StateStore(tmp_path / "state")


def config(tmp_path, **extra):
    return parse_config({"state_dir": str(tmp_path / "state"), "root": str(tmp_path / "root"),
                         "backup_dir": str(tmp_path / "backups"), **extra})


def refused_report(run_id="20261127T030000Z-abc123"):
    gate = GateResult("pairing-probe", "alice", "fail", 1.25,
                      "alice: exchange answered 404; Set-Cookie: t3_session=s3cr3tvalue",
                      evidence="/x/alice.pairing-probe.json", fingerprint="pairing-probe:exchange:404:HTTPStatus")
    return NightReport(outcome=Outcome.REFUSED, run_id=run_id, reason="gate pairing-probe failed for alice", candidate="0.0.43-nightly.20261127.3001", from_version="0.0.42", gates=[gate], evidence=f"/state/evidence/{run_id}")


def test_result_json_is_the_run_document_with_fingerprints_private_and_redacted(store):
    report = refused_report()
    path = evidence.write_result(store, report.run_id, evidence.result_document(report))
    assert path == store.dir / "evidence" / report.run_id / "result.json"
    document = json.loads(path.read_text())
    assert document["outcome"] == "refused" and document["from"] == "0.0.42"
    assert document["gates"][0]["fingerprint"] == "pairing-probe:exchange:404:HTTPStatus"
    assert document["gates"][0]["evidence"] == "/x/alice.pairing-probe.json"
    assert "s3cr3tvalue" not in path.read_text()
    assert mode(path) == 0o600 and mode(path.parent) == 0o700 and mode(path.parent.parent) == 0o700


def test_the_teed_progress_log_keeps_each_line_timestamped_and_redacted(store):
    seen = []
    progress = evidence.teed_progress(store, "20261127T030000Z-abc123", seen.append)
    progress("stop alice's server")
    progress("startup said Token: ABCDEFGH2345")
    lines = (store.dir / "evidence" / "20261127T030000Z-abc123" / "run.log").read_text().splitlines()
    assert seen == ["stop alice's server", "startup said Token: ABCDEFGH2345"]
    assert lines[0].endswith(" stop alice's server") and lines[0][:4] == "2026"
    assert "ABCDEFGH2345" not in lines[1] and "[REDACTED]" in lines[1]


def test_a_run_id_with_a_path_in_it_is_refused(store):
    with pytest.raises(UsageError):
        evidence.evidence_dir(store, "../../etc")


def _run_dir(store, run_id, mtime=None):
    path = store.dir / "evidence" / run_id
    path.mkdir(parents=True)
    (path / "result.json").write_text("{}")
    if mtime is not None:
        os.utime(path, (mtime.timestamp(), mtime.timestamp()))
    return path


def test_pruning_removes_evidence_older_than_evidence_max_age_only(tmp_path, store):
    old = _run_dir(store, "20261020T030000Z-aaaaaa")      # 38 days old
    recent = _run_dir(store, "20261120T030000Z-bbbbbb")   # 7 days old
    removed = evidence.prune(config(tmp_path, evidence_max_age="30d"), store, now=NOW)
    assert removed == [old]
    assert not old.exists() and recent.is_dir()


def test_pruning_keeps_the_evidence_behind_a_denial_and_the_last_run(tmp_path, store):
    denied = _run_dir(store, "20261001T030000Z-aaaaaa")
    last = _run_dir(store, "20261002T030000Z-bbbbbb")
    other = _run_dir(store, "20261003T030000Z-cccccc")
    store.save(State(denied=[Denial(version="0.0.43-nightly.20261001.1", reason="x", at=NOW, evidence=str(denied))],
                     last_run=LastRun(at=NOW, outcome="noop", exit_code=0, run_id=last.name)))
    evidence.prune(config(tmp_path, evidence_max_age="30d"), store, now=NOW)
    assert denied.is_dir() and last.is_dir() and not other.exists()


def test_pruning_dates_a_directory_without_a_run_id_by_its_mtime(tmp_path, store):
    stale = _run_dir(store, "handmade", mtime=NOW - timedelta(days=40))
    fresh = _run_dir(store, "handmade2", mtime=NOW - timedelta(days=1))
    evidence.prune(config(tmp_path, evidence_max_age="30d"), store, now=NOW)
    assert not stale.exists() and fresh.is_dir()


# ---------------------------------------------------------------- t3track show


@pytest.fixture
def shown(tmp_path, monkeypatch, store):
    path = tmp_path / "config.yaml"
    path.write_text(f"root: {tmp_path / 'root'}\nstate_dir: {tmp_path / 'state'}\nbackup_dir: {tmp_path / 'b'}\n")
    monkeypatch.setenv("T3TRACK_CONFIG", str(path))
    report = refused_report()
    evidence.write_result(store, report.run_id, evidence.result_document(report))
    (store.dir / "evidence" / report.run_id / "alice.sandbox.log").write_text("line\n")
    store.record("run", by="t3track", run_id=report.run_id, outcome="refused")
    return report


def test_show_prints_the_run_and_lists_its_evidence_files(shown):
    result = CliRunner().invoke(app, ["show", shown.run_id])
    assert result.exit_code == 0, result.output
    assert "refused" in result.output and "gate pairing-probe failed for alice" in result.output
    assert "alice.sandbox.log" in result.output and "result.json" in result.output


def test_show_json_is_the_result_document_with_files_and_history(shown):
    result = CliRunner().invoke(app, ["show", shown.run_id[:12], "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["run_id"] == shown.run_id
    assert document["result"]["outcome"] == "refused"
    assert {f["name"] for f in document["files"]} == {"result.json", "alice.sandbox.log"}
    assert [e["event"] for e in document["events"]] == ["run"]


def test_show_of_an_unknown_run_is_a_usage_error(shown):
    result = CliRunner().invoke(app, ["show", "20200101T000000Z-ffffff"])
    assert result.exit_code == 2
    assert "no run" in result.output
