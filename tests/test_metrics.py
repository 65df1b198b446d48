"""The node_exporter textfile: read back with prometheus_client's own parser, values checked."""

import json
import stat
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from t3track.aftermath import metrics
from t3track.clock import utcnow
from t3track.config import parse_config
from t3track.errors import ExitCode
from t3track.night import ledger
from t3track.night.report import NightReport
from t3track.results import GateResult, Outcome
from t3track.state import Freeze, Pin, State, StateStore

V1 = "0.0.43-nightly.20261126.3001"
V2 = "0.0.43-nightly.20261127.3002"


def read_metrics(path):
    """{(name, frozenset(labels)): value} from the file, through prometheus_client's parser."""
    samples = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples[(name, frozenset(labels.items()))]


@pytest.fixture
def config(tmp_path):
    return parse_config({"state_dir": str(tmp_path / "state"), "root": str(tmp_path / "root"),
                         "backup_dir": str(tmp_path / "backups"), "package": "t3",
                         "users": [{"name": "alice", "base_dir": str(tmp_path / "alice"), "port": 3773},
                                   {"name": "bob", "base_dir": str(tmp_path / "bob"), "port": 3774}]})


@pytest.fixture
def store(config):
    return StateStore(config.state_dir)


def make_backup(config, user, age):
    created = utcnow() - age
    path = config.backup_dir / user / created.strftime("%Y%m%dT%H%M%SZ")
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"created_at": created.isoformat(), "files": {}}))


def finish(store, config, report, state=None):
    """Record the run as the night does (ledger.record_run), the after-run step under test included."""
    if state is not None:
        store.save(state)
    return ledger.record_run(config, store, report, event="run", last_run=True)


def gates(*outcomes, user="alice"):
    names = ["backup-present", "sandbox-serve", "pairing-probe"]
    return [GateResult(n, user, o, 0.5 + i, f"{n} {o}", fingerprint=None if o == "pass" else f"{n}:x:1:E")
            for i, (n, o) in enumerate(zip(names, outcomes))]


def test_after_a_good_night_the_file_says_swapped_with_the_new_version_and_passing_gates(config, store):
    make_backup(config, "alice", timedelta(hours=2))
    report = NightReport(outcome=Outcome.SWAPPED, run_id="20261127T030000Z-aaaaaa", reason=f"swapped 0.0.42 -> {V1}", candidate=V1, from_version="0.0.42", to_version=V1, gates=gates("pass", "pass", "pass"))
    assert finish(store, config, report, State(current=V1, previous="0.0.42")) == []
    samples = read_metrics(config.metrics_file())
    assert value(samples, "t3track_last_run_outcome", outcome="swapped") == 1
    assert value(samples, "t3track_last_run_outcome", outcome="refused") == 0
    assert value(samples, "t3track_last_run_exit_code") == 0
    assert abs(value(samples, "t3track_last_run_timestamp_seconds") - utcnow().timestamp()) < 60
    assert value(samples, "t3track_current_version_info", version=V1, previous="0.0.42", package="t3",
                 channel="nightly") == 1
    assert value(samples, "t3track_gate_result", gate="pairing-probe", user="alice", outcome="pass") == 1
    assert value(samples, "t3track_gate_result", gate="pairing-probe", user="alice", outcome="fail") == 0
    assert value(samples, "t3track_gate_duration_seconds", gate="sandbox-serve", user="alice") == 1.5
    assert value(samples, "t3track_consecutive_refusals") == 0
    assert 7100 < value(samples, "t3track_backup_age_seconds", user="alice") < 7300
    assert value(samples, "t3track_backup_present", user="bob") == 0
    assert ("t3track_backup_age_seconds", frozenset({("user", "bob")})) not in samples
    assert value(samples, "t3track_frozen") == 0 and value(samples, "t3track_pinned") == 0
    from t3track import __version__, build_commit

    commit = build_commit()
    assert commit != "unknown"  # the tests run from a checkout
    assert value(samples, "t3track_build_info", version=__version__, commit=commit) == 1


def test_after_refused_nights_the_file_counts_consecutive_refusals_and_shows_the_failed_gate(config, store):
    store.save(State(current="0.0.42"))
    finish(store, config, NightReport(outcome=Outcome.SWAPPED, run_id="20261125T030000Z-aaaaaa", reason="ok", candidate="0.0.42", from_version=None, to_version="0.0.42"))
    for day, run_id in ((26, "20261126T030000Z-bbbbbb"), (27, "20261127T030000Z-cccccc")):
        report = NightReport(outcome=Outcome.REFUSED, run_id=run_id, reason="gate pairing-probe failed for alice", candidate=f"0.0.43-nightly.202611{day}.1", from_version="0.0.42", gates=gates("pass", "pass", "fail"))
        finish(store, config, report)
    samples = read_metrics(config.metrics_file())
    assert value(samples, "t3track_last_run_outcome", outcome="refused") == 1
    assert value(samples, "t3track_last_run_exit_code") == 1
    assert value(samples, "t3track_consecutive_refusals") == 2
    assert value(samples, "t3track_gate_result", gate="pairing-probe", user="alice", outcome="fail") == 1
    assert value(samples, "t3track_current_version_info", version="0.0.42", previous="", package="t3",
                 channel="nightly") == 1
    # the last good run is still there for a "no good run in 2 days" alert
    assert value(samples, "t3track_last_ok_run_timestamp_seconds") > 0


def test_after_a_rollback_the_file_says_rolled_back_and_the_live_check_failed(config, store):
    store.save(State(current="0.0.42"))
    live = [GateResult("live-verify", "bob", "fail", 3.0, "no cookie", fingerprint="live-verify:exchange:200")]
    report = NightReport(outcome=Outcome.ROLLED_BACK, run_id="20261127T030000Z-dddddd", reason="live check failed for bob", candidate=V2, from_version="0.0.42", to_version="0.0.42", gates=gates("pass", "pass", "pass") + live)
    finish(store, config, report)
    samples = read_metrics(config.metrics_file())
    assert value(samples, "t3track_last_run_outcome", outcome="rolled_back") == 1
    assert value(samples, "t3track_gate_result", gate="live-verify", user="bob", outcome="fail") == 1
    assert value(samples, "t3track_consecutive_refusals") == 1


def test_a_no_op_night_clears_the_gate_series_of_the_night_before(config, store):
    store.save(State(current="0.0.42"))
    finish(store, config, NightReport(outcome=Outcome.REFUSED, run_id="20261126T030000Z-bbbbbb", reason="x", candidate=V1, from_version="0.0.42", gates=gates("fail")))
    finish(store, config, NightReport(outcome=Outcome.NOOP, run_id="20261127T030000Z-cccccc", reason="nightly is current"))
    samples = read_metrics(config.metrics_file())
    assert not [k for k in samples if k[0] == "t3track_gate_result"]
    assert value(samples, "t3track_consecutive_refusals") == 0


def test_frozen_until_and_pinned_are_exported(config, store):
    until = utcnow() + timedelta(days=2)
    store.save(State(current="0.0.42", frozen=Freeze(reason="holiday", by="ops", at=utcnow(), until=until),
                     pinned=Pin(version="0.0.42", reason="hold", by="ops", at=utcnow())))
    samples = read_metrics(metrics.write(config, store))
    assert value(samples, "t3track_frozen") == 1 and value(samples, "t3track_pinned") == 1
    assert value(samples, "t3track_frozen_until_timestamp_seconds") == pytest.approx(until.timestamp(), abs=1)


def test_an_expired_freeze_reads_as_not_frozen(config, store):
    store.save(State(frozen=Freeze(reason="x", by="ops", at=utcnow() - timedelta(days=2),
                                   until=utcnow() - timedelta(days=1))))
    assert value(read_metrics(metrics.write(config, store)), "t3track_frozen") == 0


def test_the_default_file_is_private_in_state_dir_and_a_configured_one_is_world_readable(tmp_path, config, store):
    default = metrics.write(config, store)
    assert default == config.state_dir / "metrics" / "t3track.prom"
    assert stat.S_IMODE(default.stat().st_mode) == 0o600
    assert stat.S_IMODE(default.parent.stat().st_mode) == 0o700
    textfile = tmp_path / "node_exporter" / "t3track.prom"
    configured = config.model_copy(update={"metrics_path": textfile})
    assert metrics.write(configured, store) == textfile
    assert stat.S_IMODE(textfile.stat().st_mode) == 0o644  # node_exporter runs as its own user
    assert [p.name for p in textfile.parent.iterdir()] == ["t3track.prom"]  # no temporary file left


def test_a_metrics_path_must_be_an_absolute_prom_file():
    with pytest.raises(Exception) as info:
        parse_config({"metrics_path": "t3track.txt"})
    assert "metrics_path" in str(info.value.problems)


def test_a_metrics_file_that_cannot_be_written_is_a_note_never_an_error(tmp_path, config, store):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a directory should be")
    broken = config.model_copy(update={"metrics_path": blocker / "t3track.prom"})
    report = NightReport(outcome=Outcome.NOOP, run_id="20261127T030000Z-eeeeee", reason="nightly is current")
    notes = finish(store, broken, report)
    assert len(notes) == 1 and "metrics not written" in notes[0]
    assert report.exit_code == ExitCode.OK
    assert json.loads((store.dir / "evidence" / report.run_id / "result.json").read_text())["outcome"] == "noop"


def test_the_last_drill_is_exported_from_history(config, store):
    store.record("drill", by="ops", run_id="20261127T030000Z-ffffff", outcome="rolled_back", exit_code=0,
                 downtime_s=2.5)
    samples = read_metrics(metrics.write(config, store))
    assert value(samples, "t3track_last_drill_ok") == 1
    assert value(samples, "t3track_last_drill_downtime_seconds") == 2.5


# ---------------------------------------------------------------- real nights on the emulator host


def host_metrics(host):
    return read_metrics(host.state_dir / "metrics" / "t3track.prom")


@pytest.mark.slow
def test_metrics_after_a_good_night_on_the_host(host):
    from tests.support.host import nightly

    v = nightly(1)
    host.publish(v, migrations=53)
    result = host.t3track("run")
    assert result.returncode == 0, result.stderr
    samples = host_metrics(host)
    assert value(samples, "t3track_last_run_outcome", outcome="swapped") == 1
    assert value(samples, "t3track_last_run_exit_code") == 0
    assert value(samples, "t3track_current_version_info", version=v, previous="0.0.42", package="t3",
                 channel="nightly") == 1
    for user in ("alice", "bob"):
        for gate in ("backup-present", "sandbox-serve", "pairing-probe", "live-verify"):
            assert value(samples, "t3track_gate_result", gate=gate, user=user, outcome="pass") == 1
            assert value(samples, "t3track_gate_duration_seconds", gate=gate, user=user) >= 0
        assert 0 <= value(samples, "t3track_backup_age_seconds", user=user) < 600
    assert value(samples, "t3track_consecutive_refusals") == 0


@pytest.mark.slow
def test_metrics_after_a_refused_night_on_the_host(host):
    from tests.support.host import nightly

    host.publish(nightly(1), fault="exchange-500")
    result = host.t3track("run")
    assert result.returncode == 1, result.stderr
    samples = host_metrics(host)
    assert value(samples, "t3track_last_run_outcome", outcome="refused") == 1
    assert value(samples, "t3track_last_run_exit_code") == 1
    assert value(samples, "t3track_gate_result", gate="pairing-probe", user="alice", outcome="fail") == 1
    assert value(samples, "t3track_gate_result", gate="sandbox-serve", user="alice", outcome="pass") == 1
    assert value(samples, "t3track_consecutive_refusals") == 1
    assert value(samples, "t3track_current_version_info", version="0.0.42", previous="", package="t3",
                 channel="nightly") == 1


@pytest.mark.slow
def test_metrics_after_a_rollback_on_the_host(host):
    from tests.support.host import nightly

    host.publish(nightly(1), fault="no-cookie-live")
    result = host.t3track("run")
    assert result.returncode == 1, result.stderr
    samples = host_metrics(host)
    assert value(samples, "t3track_last_run_outcome", outcome="rolled_back") == 1
    assert value(samples, "t3track_gate_result", gate="live-verify", user="alice", outcome="fail") == 1
    for user in ("alice", "bob"):  # the old version passed its live check again after the rollback
        assert value(samples, "t3track_gate_result", gate="rollback-verify", user=user, outcome="pass") == 1
    assert value(samples, "t3track_consecutive_refusals") == 1
    assert value(samples, "t3track_current_version_info", version="0.0.42", previous="", package="t3",
                 channel="nightly") == 1
