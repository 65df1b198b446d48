"""Failure fingerprints on denials, and the channel freezing itself on a repeated failure."""

import json

import pytest

from t3track.aftermath import fingerprints
from t3track.clock import utcnow
from t3track.config import parse_config
from t3track.night.report import NightReport
from t3track.results import GateResult, Outcome
from t3track.state import Denial, State, StateStore

FP = "pairing-probe:exchange:404:HTTPStatus"


def nightly(n):
    return f"0.0.43-nightly.202611{10 + n}.{3000 + n}"


@pytest.fixture
def config(tmp_path):
    return parse_config({"state_dir": str(tmp_path / "state")})


@pytest.fixture
def store(config):
    s = StateStore(config.state_dir)
    s.save(State(current="0.0.42"))
    return s


def refused(version, fingerprint=FP, n=1, gate="pairing-probe"):
    failed = GateResult(gate, "alice", "fail", 1.0, "it failed", fingerprint=fingerprint)
    return NightReport(outcome=Outcome.REFUSED, run_id=f"2026111{n}T030000Z-00000{n}", reason="gate failed", candidate=version, from_version="0.0.42", gates=[failed], evidence=f"/state/evidence/run{n}")


def test_a_denied_version_records_the_gate_fingerprint_and_evidence(config, store):
    state = store.load()
    state.denied.append(Denial(version=nightly(1), reason="failed 3 times", at=utcnow(), by="t3track"))
    store.save(state)
    fingerprints.after_run(config, store, refused(nightly(1)))
    denial = store.load().denial(nightly(1))
    assert denial.fingerprint == FP and denial.gate == "pairing-probe" and denial.evidence == "/state/evidence/run1"


def test_two_nightlies_failing_the_same_way_freeze_the_channel_with_a_generated_reason(config, store):
    assert fingerprints.after_run(config, store, refused(nightly(1), n=1)) is None
    assert store.load().frozen is None
    freeze = fingerprints.after_run(config, store, refused(nightly(2), n=2))
    frozen = store.load().frozen
    assert freeze is not None and frozen is not None and frozen.by == "t3track" and frozen.until is None
    for text in (nightly(1), nightly(2), FP, "/state/evidence/run2", "unfreeze"):
        assert text in frozen.reason
    event = store.history()[0]
    assert event["event"] == "freeze" and event["automatic"] is True and event["fingerprint"] == FP


def test_the_same_nightly_failing_again_is_not_a_second_nightly(config, store):
    for n in (1, 2, 3):
        fingerprints.after_run(config, store, refused(nightly(1), n=n))
    assert store.load().frozen is None
    assert [f.version for f in fingerprints.streak(store)] == [nightly(1)]


def test_a_different_fingerprint_starts_a_new_streak(config, store):
    fingerprints.after_run(config, store, refused(nightly(1), n=1))
    fingerprints.after_run(config, store, refused(nightly(2), fingerprint="sandbox-serve:crash:-:SandboxFailed",
                                                  gate="sandbox-serve", n=2))
    assert store.load().frozen is None
    assert [f.fingerprint for f in fingerprints.streak(store)] == ["sandbox-serve:crash:-:SandboxFailed"]


def test_a_verified_swap_ends_the_streak(config, store):
    fingerprints.after_run(config, store, refused(nightly(1), n=1))
    fingerprints.after_run(config, store, NightReport(outcome=Outcome.SWAPPED, run_id="r", reason="ok", candidate=nightly(2), from_version="0.0.42", to_version=nightly(2)))
    fingerprints.after_run(config, store, refused(nightly(3), n=3))
    assert store.load().frozen is None


def test_zero_disables_the_self_freeze(tmp_path, store):
    config = parse_config({"state_dir": str(store.dir), "fingerprint_freeze_after": 0})
    for n in (1, 2, 3):
        fingerprints.after_run(config, store, refused(nightly(n), n=n))
    assert store.load().frozen is None


def test_a_dry_run_never_counts(config, store):
    for n in (1, 2):
        report = refused(nightly(n), n=n)
        report.dry_run = True
        fingerprints.after_run(config, store, report)
    assert store.load().frozen is None and not (store.dir / "fingerprints.json").exists()


def test_after_unfreezing_it_takes_fresh_failures_to_freeze_again(config, store):
    fingerprints.after_run(config, store, refused(nightly(1), n=1))
    fingerprints.after_run(config, store, refused(nightly(2), n=2))
    state = store.load()
    state.frozen = None
    store.save(state)
    fingerprints.after_run(config, store, refused(nightly(3), n=3))
    assert store.load().frozen is None
    assert json.loads((store.dir / "fingerprints.json").read_text())["streak"][0]["version"] == nightly(3)


def test_a_revert_that_rolled_back_never_counts_towards_the_self_freeze(config, store):
    from t3track import aftermath as afterrun

    for n in (1, 2):
        report = refused(nightly(n), n=n)
        report.outcome = "rolled_back"
        afterrun.after_run(config, store, report, nightly=False)
    assert store.load().frozen is None and fingerprints.streak(store) == []


@pytest.mark.slow
def test_two_real_nightlies_failing_alike_on_the_host_freeze_the_channel(tmp_path):
    from tests.support.host import build_host
    from tests.support.host import nightly as host_nightly

    host = build_host(tmp_path / "host")
    try:
        assert host.t3track("backup").returncode == 0
        host.publish(host_nightly(1), fault="exchange-500")
        assert host.t3track("run").returncode == 1
        assert host.state().get("frozen") is None
        host.publish(host_nightly(2), fault="exchange-500")
        assert host.t3track("run").returncode == 1
        frozen = host.state()["frozen"]
        assert frozen["by"] == "t3track"
        assert host_nightly(1) in frozen["reason"] and host_nightly(2) in frozen["reason"]
        streak_fp = next(e for e in reversed(host.history()) if e["event"] == "freeze")["fingerprint"]
        assert streak_fp.startswith("pairing-probe:") and streak_fp in frozen["reason"]
        host.publish(host_nightly(3))
        noop = host.t3track("run", "--json")
        assert noop.returncode == 0 and json.loads(noop.stdout)["outcome"] == "noop"
        assert host.current_target() == "versions/0.0.42"
    finally:
        host.close()


def test_a_missing_backup_is_the_hosts_fault_and_never_counts_towards_the_self_freeze(config, store):
    for n in (1, 2):
        fingerprints.after_run(config, store, refused(nightly(n), fingerprint="backup-present:backup:-:NoFreshBackup",
                                                      gate="backup-present", n=n))
    assert store.load().frozen is None and fingerprints.streak(store) == []
