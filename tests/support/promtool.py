"""promtool and node_exporter for the alert-rule tests: Debian's `prometheus` and
`prometheus-node-exporter` packages (scripts/test.sh installs them when missing).

`input_series` turns a metrics file that a real t3track run wrote into promtool's `input_series`:
every sample becomes a constant series with the labels a scrape adds (`instance`, `job`). Values
that are unix times (`*_timestamp_seconds`) are shifted by the file's write time, so promtool's
clock 0 is the moment the run wrote the file and `eval_time: 3d` reads "three days after that run".
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "t3track.rules.yml"
NODE_EXPORTER = "prometheus-node-exporter"
INSTANCE = {"instance": "t3-host-1:9100", "job": "node"}
INTERVAL = "5m"        # a scrape (and a rule evaluation) every 5 minutes: within the lookback, so `for:` holds
INTERVAL_S = 300
DAY_SAMPLES = 86400 // INTERVAL_S
_TEMPLATE = re.compile(r"\{\{\s*(\$labels\.(\w+)|\$value)\s*\}\}")


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        import pytest

        pytest.fail("promtool is missing: `apt-get install prometheus` (scripts/test.sh does it)")
    return path


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample, through prometheus_client's own parser."""
    return [(s.name, dict(s.labels), s.value)
            for family in text_string_to_metric_families(text) for s in family.samples]


def _selector(name: str, labels: dict[str, str]) -> str:
    return name + "{" + ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(labels.items())) + "}"


def input_series(text: str, *, written_at: float, days: float = 8, extra_labels: dict[str, str] | None = None,
                 only_prefix: str = "t3track_") -> list[dict[str, str]]:
    """Constant series, one sample a minute for `days` (the file is not rewritten: the tracker stopped)."""
    count = int(days * DAY_SAMPLES)
    series = []
    for name, labels, value in samples(text):
        if not name.startswith(only_prefix):
            continue
        if name.endswith("_timestamp_seconds"):
            value -= written_at
        series.append({"series": _selector(name, {**labels, **(extra_labels or INSTANCE)}),
                       "values": f"{value:.3f}+0x{count}"})
    return series


def rules() -> dict[str, dict[str, Any]]:
    """alert name -> rule, from the shipped file."""
    document = yaml.safe_load(RULES.read_text())
    return {rule["alert"]: rule for group in document["groups"] for rule in group["rules"] if "alert" in rule}


def expected(alert: str, labels: dict[str, str], value: float | None = None) -> dict[str, Any]:
    """An `exp_alerts` entry: the series' labels plus the rule's, annotations rendered like Prometheus
    renders these simple templates ({{ $labels.x }}, {{ $value }})."""
    rule = rules()[alert]
    full = {**INSTANCE, **labels, **rule.get("labels", {})}

    def render(text: str) -> str:
        def one(match: re.Match[str]) -> str:
            if match.group(2):
                return full.get(match.group(2), "")
            assert value is not None, f"{alert} prints $value: give the expected value"
            return f"{value:g}"
        return _TEMPLATE.sub(one, text)

    return {"exp_labels": full, "exp_annotations": {k: render(v) for k, v in rule.get("annotations", {}).items()}}


def run_tests(workdir: Path, tests: list[dict[str, Any]]) -> subprocess.CompletedProcess:
    """Write a promtool unit-test file for the shipped rules and run `promtool test rules` on it."""
    path = workdir / "t3track.rules.test.yml"
    path.write_text(yaml.safe_dump({"rule_files": [str(RULES)], "evaluation_interval": INTERVAL, "tests": tests},
                                   sort_keys=False))
    return subprocess.run([promtool(), "test", "rules", str(path)], capture_output=True, text=True, timeout=60)


# ---------------------------------------------------------------- node_exporter


class NodeExporter:
    """A real node_exporter on a free loopback port reading only `textfile_dir` (every other
    collector off). Started and stopped by its own PID, never the system's service."""

    def __init__(self, textfile_dir: Path, log_path: Path):
        from t3track.host.sandbox import free_port

        binary = shutil.which(NODE_EXPORTER)
        if binary is None:
            import pytest

            pytest.fail(f"{NODE_EXPORTER} is missing: `apt-get install {NODE_EXPORTER}` (scripts/test.sh does it)")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [binary, "--collector.disable-defaults", "--collector.textfile",
             f"--collector.textfile.directory={textfile_dir}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def scrape(self, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                response = httpx.get(self.url, timeout=2)
                response.raise_for_status()
                return response.text
            except httpx.HTTPError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.log.close()
