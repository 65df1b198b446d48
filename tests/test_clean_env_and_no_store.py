"""Two V2-era facts of the handshake's surroundings (t3code-contract.md, "Environment" and "Auth"):
every `serve` flag has a T3CODE_* fallback, so nothing of the caller's T3CODE_* may reach the sandbox,
the probe's mint or the live check; and credential responses carry `cache-control: no-store` and
`pragma: no-cache`, whose absence is the 7756 class's second signal."""

from __future__ import annotations

import json

import pytest
from tests.emulator.t3emu import RECORD_PREFIX
from tests.support.host import nightly

pytestmark = pytest.mark.slow

CALLER = {"T3CODE_MODE": "desktop", "T3CODE_HOME": "/nonexistent/t3-home", "T3CODE_PORT": "9",
          "T3CODE_HOST": "0.0.0.0", "T3CODE_AUTH_TOKEN": "caller-secret", "T3CODE_TELEMETRY_ENABLED": "true"}
ONLY_OURS = {"T3CODE_TELEMETRY_ENABLED": "false"}


def gate(doc: dict, name: str, user: str = "alice") -> dict:
    return next(g for g in doc["gates"] if g["name"] == name and g["user"] == user)


def test_no_t3code_variable_of_the_caller_reaches_the_sandbox_the_mint_or_the_live_check(host, tmp_path):
    record = tmp_path / "t3code-env.jsonl"
    v = nightly(1)
    host.publish(v, migrations=53, env_record=str(record))
    result = host.t3track("run", "--json", env=CALLER)
    assert result.returncode == 0 and json.loads(result.stdout)["outcome"] == "swapped", result.stdout + result.stderr
    seen = [json.loads(line) for line in record.read_text().splitlines()]
    # A confined rehearsal writes nothing outside its copy (its record lands in its private /tmp): its
    # serve says what it saw in its log, the evidence; its mint has the same environment, unseen here.
    seen += [json.loads(line.split(RECORD_PREFIX, 1)[1]) for log in host.state_dir.glob("evidence/*/*.sandbox-*.log")
             for line in log.read_text().splitlines() if RECORD_PREFIX in line]
    sandbox_serves = [r for r in seen if r["command"] == "serve" and "t3track-sandbox-" in r["base_dir"]]
    mints = [r for r in seen if r["command"] == "auth pairing create"]
    live_mints = [r for r in mints if r["base_dir"] in {str(u.base_dir) for u in host.users}]
    assert len(sandbox_serves) == 2 and len(mints) == 2 and len(live_mints) == 2   # each user: its sandbox, its live mint
    for entry in mints + sandbox_serves:
        assert entry["env"] == ONLY_OURS, entry


def test_a_good_exchange_without_no_store_is_inconclusive_and_says_so(host):
    host.publish(nightly(1), migrations=53, fault="no-cache-headers")
    result = host.t3track("dry-run", "--json")
    doc = json.loads(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr       # inconclusive does not stop the run
    probe = gate(doc, "pairing-probe")
    assert probe["outcome"] == "inconclusive"
    assert "cookie t3_session_" in probe["detail"] and "replayed" in probe["detail"]
    assert "without cache-control: no-store and pragma: no-cache" in probe["detail"]


def test_a_missing_cookie_still_fails_and_names_the_missing_headers_beside_it(host):
    host.publish(nightly(1), migrations=53, fault="no-cookie")
    result = host.t3track("dry-run", "--json")
    doc = json.loads(result.stdout)
    assert result.returncode == 1, result.stdout + result.stderr
    probe = gate(doc, "pairing-probe")
    assert probe["outcome"] == "fail"
    assert "without a Set-Cookie and without cache-control: no-store and pragma: no-cache" in probe["detail"]


def test_the_live_check_passes_a_build_without_no_store_but_records_it(host):
    v = nightly(1)
    host.publish(v, migrations=53)
    assert host.t3track("dry-run").returncode == 0
    host.set_fault(v, "no-cache-headers-live")
    result = host.t3track("run", "--json")
    doc = json.loads(result.stdout)
    assert result.returncode == 0 and doc["outcome"] == "swapped", result.stdout
    live = gate(doc, "live-verify")
    assert live["outcome"] == "pass" and "without cache-control: no-store" in live["detail"]
