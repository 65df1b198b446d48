"""deploy/prometheus/t3track.rules.yml, held to what t3track really writes.

Real nights run on an emulated host (a swap, a refusal, a rollback, a failed rollback, the frozen
night after it, a night with stale and missing backups); after each one the metrics file it wrote is
kept. Every promtool test below takes its input series from one of those files (tests/support/promtool.py),
so a renamed metric or label breaks these tests, not the pager. One test reads a file through a real
node_exporter on loopback and evaluates the rules on what the scrape returned.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.support import promtool as pt

pytestmark = pytest.mark.slow

ALERTS_RUNBOOK = pt.REPO / "runbooks" / "t3track-alerts.md"


@dataclass(frozen=True)
class Written:
    """A metrics file as a real run left it."""
    path: Path
    written_at: float

    @property
    def text(self) -> str:
        return self.path.read_text()

    def series(self, days: float) -> list[dict[str, str]]:
        return pt.input_series(self.text, written_at=self.written_at, days=days)


@pytest.fixture(scope="module")
def nights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Written]:
    """The nights run once per test session, whatever the number of xdist workers: the first worker
    to get here runs them under a lock in the shared base temp dir, the others read what it kept."""
    import fcntl
    import json

    session_dir = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        session_dir = session_dir.parent  # shared by this session's workers only
    shared = session_dir / "alert-nights"
    shared.mkdir(exist_ok=True)
    index = shared / "index.json"
    with open(shared / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not index.exists():
            kept = run_nights(shared)
            index.write_text(json.dumps({name: [str(w.path), w.written_at] for name, w in kept.items()}))
    return {name: Written(Path(path), at) for name, (path, at) in json.loads(index.read_text()).items()}


def run_nights(base: Path) -> dict[str, Written]:
    from tests.support.host import build_host, nightly

    host = build_host(base / "host")
    kept: dict[str, Written] = {}

    def night(name: str, *args: str, code: int) -> None:
        result = host.t3track(*args)
        assert result.returncode == code, f"{name}: {result.stdout}\n{result.stderr}"
        source = host.state_dir / "metrics" / "t3track.prom"
        target = base / f"{name}.prom"
        shutil.copy2(source, target)
        kept[name] = Written(target, source.stat().st_mtime)

    try:
        assert host.t3track("backup").returncode == 0
        v1, v2, v3, v4 = (nightly(i) for i in (1, 2, 3, 4))
        host.publish(v1, migrations=53)
        night("swapped", "run", code=0)
        assert host.t3track("backup").returncode == 0          # of the state v1 migrated
        host.publish(v2, fault="exchange-500")
        night("refused", "run", code=1)
        host.publish(v3, fault="no-cookie-live")
        night("rolled_back", "run", code=1)
        host.publish(v4)
        assert host.t3track("dry-run").returncode == 0          # installs v4
        host.set_fault(v4, "no-cookie-live")
        host.set_fault(v1, "crash-on-start-live")                # and v1 cannot come back either
        host.write_config(verify_timeout="5s")                   # how long the dead v1 is waited for
        night("critical", "run", code=4)
        host.set_fault(v1, None)
        night("frozen", "run", code=1)                           # the rollback finishes (rolled_back); still frozen
        assert host.t3track("unfreeze").returncode == 0
        host.write_config(gates={"backup_max_age": "2s"})
        shutil.rmtree(host.backup_dir / "bob")
        time.sleep(2.5)
        night("backups", "run", code=0)                          # v4 is denied: nothing to do
    finally:
        host.close()
    ringed = build_host(base / "ringed", rings=[{"name": "canary", "users": ["alice"]},
                                                 {"name": "everyone", "users": ["bob"], "soak": "24h"}])
    try:
        host = ringed
        assert host.t3track("backup").returncode == 0
        host.publish(nightly(1))
        night("ringed", "run", code=0)                           # the canary takes it; everyone soaks
    finally:
        ringed.close()
    return kept


def promtool_ok(tmp_path: Path, tests: list[dict]) -> None:
    done = pt.run_tests(tmp_path, tests)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def case(written: Written, *checks: dict, days: float = 1) -> dict:
    """The file's series for `days`, one sample a minute, and the alert checks on them."""
    return {"interval": pt.INTERVAL, "input_series": written.series(days), "alert_rule_test": list(checks)}


def at(eval_time: str, alert: str, *alerts: dict) -> dict:
    return {"eval_time": eval_time, "alertname": alert, "exp_alerts": list(alerts)}


# ---------------------------------------------------------------- the file itself


def test_promtool_accepts_the_rules_file():
    import subprocess

    done = subprocess.run([pt.promtool(), "check", "rules", str(pt.RULES)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(pt.rules())} rules found" in done.stdout


def test_every_metric_a_rule_reads_is_in_a_file_a_real_night_wrote(nights):
    written = {name for w in nights.values() for name, _, _ in pt.samples(w.text)}
    used = {name for rule in pt.rules().values() for name in re.findall(r"\bt3track_[a-z_]+", rule["expr"])}
    assert used, "the rules read no t3track metric?"
    assert used <= written, f"rules read metrics no night writes: {sorted(used - written)}"


def test_every_alert_links_to_its_section_of_the_alerts_runbook():
    text = ALERTS_RUNBOOK.read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", line[3:].strip().lower()).replace(" ", "-")
               for line in text.splitlines() if line.startswith("## ")}
    for alert, rule in pt.rules().items():
        url = rule["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        assert (pt.REPO / path).resolve() == ALERTS_RUNBOOK.resolve(), alert
        assert anchor == alert.lower() and anchor in anchors, f"{alert}: no section #{anchor} in {path}"
        assert rule["labels"]["severity"] in ("page", "warning")


# ---------------------------------------------------------------- each alert on a real night's file


def test_after_a_good_night_no_alert_fires(tmp_path, nights):
    quiet = [at("10m", alert) for alert in pt.rules()]
    # the same series do fire once the tracker has been silent for long: the quiet above is not "no data"
    control = at("37h", "T3trackNotRunning", pt.expected("T3trackNotRunning", {}))
    promtool_ok(tmp_path, [case(nights["swapped"], *quiet, control, days=1.6)])


def test_a_refused_night_and_a_rolled_back_night_warn_with_their_outcome(tmp_path, nights):
    promtool_ok(tmp_path, [
        case(nights["refused"], at("10m", "T3trackNightRefused", pt.expected("T3trackNightRefused", {"outcome": "refused"})),
             at("10m", "T3trackCritical")),
        case(nights["rolled_back"],
             at("10m", "T3trackNightRefused", pt.expected("T3trackNightRefused", {"outcome": "rolled_back"})),
             at("10m", "T3trackRefusedRepeatedly")),  # two in a row: not yet
    ])


def test_a_critical_night_pages_and_a_left_journal_pages_after_two_hours(tmp_path, nights):
    promtool_ok(tmp_path, [case(
        nights["critical"],
        at("10m", "T3trackCritical", pt.expected("T3trackCritical", {"outcome": "critical"})),
        at("1h", "T3trackSwapUnfinished"),
        at("3h", "T3trackSwapUnfinished", pt.expected("T3trackSwapUnfinished", {})),
        at("10m", "T3trackRefusedRepeatedly", pt.expected("T3trackRefusedRepeatedly", {}, value=3)),
    )])


def test_no_successful_run_for_three_days_warns(tmp_path, nights):
    # the critical night's file: the last exit 0 was the swap, a few seconds before it was written
    promtool_ok(tmp_path, [case(
        nights["critical"],
        at("2d", "T3trackNoSuccessfulRun"),
        at("3d1h", "T3trackNoSuccessfulRun", pt.expected("T3trackNoSuccessfulRun", {})),
        days=3.2)])


def test_a_tracker_that_stops_running_warns_after_36_hours(tmp_path, nights):
    promtool_ok(tmp_path, [case(
        nights["swapped"],
        at("30h", "T3trackNotRunning"),
        at("37h", "T3trackNotRunning", pt.expected("T3trackNotRunning", {})),
        days=1.6)])


def test_metrics_that_never_reach_prometheus_warn_after_an_hour(tmp_path, nights):
    # a node exporter that scrapes fine but serves no t3track file (metrics_path elsewhere)
    nothing = {"interval": pt.INTERVAL, "input_series": [{"series": 'node_textfile_scrape_error{instance="t3-host"}',
                                                          "values": "0+0x180"}],
               "alert_rule_test": [at("30m", "T3trackMetricsAbsent"),
                                   at("2h", "T3trackMetricsAbsent", {
                                       "exp_labels": {"severity": "warning"},
                                       "exp_annotations": pt.rules()["T3trackMetricsAbsent"]["annotations"]})]}
    promtool_ok(tmp_path, [nothing, case(nights["swapped"], at("2h", "T3trackMetricsAbsent"), days=0.2)])


def test_a_stale_backup_and_a_missing_one_warn_per_user(tmp_path, nights):
    promtool_ok(tmp_path, [case(
        nights["backups"],
        at("10m", "T3trackBackupTooOld", pt.expected("T3trackBackupTooOld", {"user": "alice"})),
        at("10m", "T3trackBackupMissing", pt.expected("T3trackBackupMissing", {"user": "bob"})),
        at("10m", "T3trackNightRefused"),
    )])


def test_a_freeze_warns_only_after_a_week(tmp_path, nights):
    promtool_ok(tmp_path, [case(
        nights["frozen"],
        at("6d", "T3trackFrozenForLong"),
        at("7d1h", "T3trackFrozenForLong", pt.expected("T3trackFrozenForLong", {})),
        at("10m", "T3trackCritical"),  # the recovery night ended well: the page clears
        days=7.2)])


def test_rings_that_disagree_warn_once_a_ring_has_not_moved_for_a_week(tmp_path, nights):
    written = nights["ringed"]
    versions = {labels["ring"]: labels["version"] for name, labels, _ in pt.samples(written.text)
                if name == "t3track_ring_version_info"}
    assert versions["canary"] != versions["everyone"]  # the night moved the canary alone
    promtool_ok(tmp_path, [case(
        written,
        at("6d", "T3trackRingBehind"),
        at("7d1h", "T3trackRingBehind", *(pt.expected("T3trackRingBehind", {"ring": r}) for r in ("canary", "everyone"))),
        at("10m", "T3trackNightRefused"),
        days=7.2)])
    # the same file with everyone on the canary's version (after its soak): rings that agree are quiet
    agreeing = tmp_path / "agreeing.prom"
    agreeing.write_text("\n".join(
        line.replace(f'version="{versions["everyone"]}"', f'version="{versions["canary"]}"')
        if line.startswith("t3track_ring_version_info") and 'ring="everyone"' in line else line
        for line in written.text.splitlines()) + "\n")
    promtool_ok(tmp_path, [case(Written(agreeing, written.written_at), at("7d1h", "T3trackRingBehind"), days=7.2)])


# ---------------------------------------------------------------- through a real node_exporter


def test_node_exporter_serves_the_file_and_the_rules_fire_on_its_scrape(tmp_path, nights):
    textfile_dir = tmp_path / "textfile"
    textfile_dir.mkdir()
    written = nights["backups"]
    shutil.copy2(written.path, textfile_dir / "t3track.prom")
    os.chmod(textfile_dir / "t3track.prom", 0o644)
    exporter = pt.NodeExporter(textfile_dir, tmp_path / "node-exporter.log")
    try:
        scraped = exporter.scrape()
    finally:
        exporter.stop()
    assert exporter.proc.returncode is not None  # stopped by its PID

    served = {(name, frozenset(labels.items())): value for name, labels, value in pt.samples(scraped)}
    assert served[("node_textfile_scrape_error", frozenset())] == 0
    in_file = pt.samples(written.text)
    assert {name for name, _, _ in in_file} >= {"t3track_last_run_outcome", "t3track_backup_age_seconds",
                                                 "t3track_backup_present", "t3track_last_ok_run_timestamp_seconds"}
    for name, labels, value in in_file:
        assert served[(name, frozenset(labels.items()))] == value, name
    assert not [k for k in served if k[0].startswith("node_cpu")]  # every other collector is off

    # the rules on what the scrape returned, not on the file
    series = pt.input_series(scraped, written_at=written.written_at, days=0.1)
    promtool_ok(tmp_path, [{"interval": pt.INTERVAL, "input_series": series, "alert_rule_test": [
        at("10m", "T3trackBackupTooOld", pt.expected("T3trackBackupTooOld", {"user": "alice"})),
        at("10m", "T3trackBackupMissing", pt.expected("T3trackBackupMissing", {"user": "bob"})),
    ]}])
