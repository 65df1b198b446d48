"""`t3track smoke VERSION`: the CI verdict on a build, without a host, config or root.

Emulator builds (a good one, one of each broken kind) are published to a loopback registry and
smoked through the real CLI: real npm installs into a scratch dir, real servers, the real pairing
handshake. Each test checks the exit code, the JSON report, the JUnit file CI reads, that no secret
reached any of them, and that the scratch dir and every server are gone afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from tests.emulator import package as emu
from tests.real_t3 import SECRET_SHAPES, processes_mentioning, publish_real
from tests.support.registry_server import RegistryServer

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
OLD = "0.0.41"
ERA_A = "0.0.24"
GOOD = "0.0.43-nightly.20261201.3001"
# fault -> the gate that must catch it
BROKEN = {
    "crash-on-start": "sandbox-serve", "never-ready": "sandbox-serve", "env-hangs": "sandbox-serve",
    "wrong-version": "sandbox-serve", "no-cookie": "pairing-probe", "renamed-endpoint": "pairing-probe",
    "reusable-credential": "pairing-probe", "cookie-not-accepted": "pairing-probe",
    "wrong-cookie-name": "pairing-probe", "exchange-500": "pairing-probe",
}
MINT_FAILS = "0.0.43-nightly.20261203.3200"  # `auth pairing create` broken; its startup token still pairs


def broken_version(i: int) -> str:
    return f"0.0.43-nightly.20261202.{3100 + i}"


@pytest.fixture(scope="module")
def registry():
    server = RegistryServer().start()
    server.publish("t3", OLD, emu.tarball_bytes(OLD, migrations=50))
    server.publish("t3", ERA_A, emu.tarball_bytes(ERA_A, era="A"))
    server.publish("t3", GOOD, emu.tarball_bytes(GOOD, migrations=53), tag="nightly")
    for i, fault in enumerate(BROKEN):
        server.publish("t3", broken_version(i), emu.tarball_bytes(broken_version(i), fault=fault))
    server.publish("t3", MINT_FAILS, emu.tarball_bytes(MINT_FAILS, fault="mint-fails"))
    yield server
    server.stop()


class Smoke:
    def __init__(self, result: subprocess.CompletedProcess, junit: Path, scratch_parent: Path):
        self.result = result
        self.junit = junit
        self.scratch_parent = scratch_parent

    @property
    def code(self) -> int:
        return self.result.returncode

    @property
    def doc(self) -> dict:
        return json.loads(self.result.stdout)

    def cases(self) -> dict[str, ET.Element]:
        suite = ET.parse(self.junit).getroot().find("testsuite")
        return {case.get("name"): case for case in suite.findall("testcase")}

    def suite(self) -> ET.Element:
        return ET.parse(self.junit).getroot().find("testsuite")


def smoke(tmp_path: Path, registry_url: str, *args: str, serve_timeout: int = 5) -> Smoke:
    """The CLI as CI runs it. 5 s to serve is plenty for the emulator and keeps the hanging kinds short."""
    scratch_parent = tmp_path / "tmp"
    scratch_parent.mkdir(exist_ok=True)
    junit = tmp_path / "junit" / "smoke.xml"
    env = dict(os.environ, TMPDIR=str(scratch_parent), PYTHONPATH=str(REPO / "src"))
    env.pop("T3TRACK_CONFIG", None)
    result = subprocess.run(
        [sys.executable, "-m", "t3track", "--config", str(tmp_path / "no-such-config.yaml"), "smoke",
         "--registry", registry_url, "--junit", str(junit), "--serve-timeout", str(serve_timeout), "--json", *args],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    done = Smoke(result, junit, scratch_parent)
    assert_left_nothing(done)
    return done


def assert_left_nothing(done: Smoke) -> None:
    assert list(done.scratch_parent.iterdir()) == [], "the scratch dir was not removed"
    assert processes_mentioning(str(done.scratch_parent)) == [], "a server outlived the smoke"
    texts = [done.result.stdout, done.result.stderr] + ([done.junit.read_text()] if done.junit.exists() else [])
    for text in texts:
        for shape in SECRET_SHAPES:
            assert not shape.search(text), f"a secret in the output: {shape.pattern}"


def test_a_good_build_passes_both_gates_on_an_empty_base_dir(tmp_path, registry):
    done = smoke(tmp_path, registry.url, GOOD)
    assert done.code == 0, done.result.stderr
    assert done.doc["outcome"] == "passed" and done.doc["candidate"] == GOOD
    assert [g["name"] for g in done.doc["gates"]] == ["sandbox-serve", "pairing-probe"]
    assert all(g["outcome"] == "pass" for g in done.doc["gates"])
    suite = done.suite()
    assert suite.get("tests") == "2" and suite.get("failures") == "0" and suite.get("errors") == "0"
    for case in done.cases().values():
        assert case.find("failure") is None and case.find("skipped") is None
    assert "ready on http://127.0.0.1:" in done.cases()["sandbox-serve"].findtext("system-out")


def test_with_from_the_build_migrates_the_older_database_and_its_sessions_survive(tmp_path, registry):
    done = smoke(tmp_path, registry.url, GOOD, "--from", OLD)
    assert done.code == 0, done.result.stderr
    gates = {g["name"]: g for g in done.doc["gates"]}
    assert set(gates) == {"sandbox-serve", "pairing-probe", "sessions-survive"}
    assert all(g["outcome"] == "pass" for g in gates.values())
    assert "migrations 50 -> 53" in gates["sandbox-serve"]["detail"]
    assert done.doc["from"] == OLD
    cases = done.cases()
    assert set(cases) == {"sandbox-serve", "pairing-probe", "sessions-survive"}
    assert cases["sessions-survive"].find("skipped") is None
    props = {p.get("name"): p.get("value") for p in done.suite().find("properties")}
    assert props == {"version": GOOD, "from": OLD, "outcome": "passed", "exit_code": "0"}


def test_sessions_that_do_not_survive_are_reported_as_skipped_not_failed(tmp_path, registry):
    done = smoke(tmp_path, registry.url, GOOD, "--from", ERA_A)   # migration 31 drops every session
    assert done.code == 0, done.result.stderr
    survive = next(g for g in done.doc["gates"] if g["name"] == "sessions-survive")
    assert survive["outcome"] == "inconclusive" and "pair again" in survive["detail"]
    skipped = done.cases()["sessions-survive"].find("skipped")
    assert skipped is not None and "pair again" in skipped.get("message")
    assert done.suite().get("skipped") == "1"


@pytest.mark.parametrize("fault", list(BROKEN))
def test_each_broken_kind_fails_its_gate_with_the_detail_in_junit(tmp_path, registry, fault):
    version = broken_version(list(BROKEN).index(fault))
    done = smoke(tmp_path, registry.url, version)
    assert done.code == 1, done.result.stdout + done.result.stderr
    doc = done.doc
    gate = BROKEN[fault]
    assert doc["outcome"] == "refused" and doc["reason"].startswith(f"gate {gate} failed")
    failed = next(g for g in doc["gates"] if g["outcome"] == "fail")
    assert failed["name"] == gate
    cases = done.cases()
    failure = cases[gate].find("failure")
    assert failure is not None and failure.get("type") == gate
    assert failure.get("message") and failure.get("message") in failed["detail"]
    assert failure.text == failed["detail"]
    assert done.suite().get("failures") == "1"
    if gate == "sandbox-serve":  # the probe was never reached
        assert cases["pairing-probe"].find("skipped") is not None


def test_a_build_whose_mint_fails_is_refused_and_keeps_redacted_evidence(tmp_path, registry):
    evidence = tmp_path / "evidence"
    done = smoke(tmp_path, registry.url, MINT_FAILS, "--evidence", str(evidence))
    assert done.code == 1, done.result.stdout + done.result.stderr
    assert done.doc["outcome"] == "refused" and done.doc["reason"].startswith("gate pairing-probe failed")
    probe_doc = json.loads((evidence / "smoke.pairing-probe.json").read_text())
    assert probe_doc["step"] == "mint" and probe_doc["kind"] == "MintFailed"
    log = (evidence / "smoke.sandbox-serve.log").read_text()
    assert "Token: [REDACTED]" in log
    for path in evidence.iterdir():
        for shape in SECRET_SHAPES:
            assert not shape.search(path.read_text()), f"{path.name}: {shape.pattern}"


def test_an_unreachable_registry_is_an_environment_error_with_an_error_testcase(tmp_path):
    from t3track.host.sandbox import free_port

    done = smoke(tmp_path, f"http://127.0.0.1:{free_port()}/", GOOD)
    assert done.code == 3, done.result.stderr
    assert done.doc["outcome"] == "error" and done.doc["error_step"] == "install"
    error = done.cases()["install"].find("error")
    assert error is not None and "installing" in error.get("message")
    assert done.suite().get("errors") == "1"


def test_a_version_the_registry_does_not_have_is_an_environment_error(tmp_path, registry):
    done = smoke(tmp_path, registry.url, "0.0.43-nightly.20261231.9999")
    assert done.code == 3
    assert "has no version" in done.doc["reason"]


def test_smoke_needs_no_config_file_and_a_bad_version_is_a_usage_error(tmp_path, registry):
    done = smoke(tmp_path, registry.url, "latest")
    assert done.code == 2
    assert not done.junit.exists()


def test_the_sample_ci_workflow_calls_smoke_with_options_it_has(tmp_path):
    import shlex

    import yaml

    workflow = yaml.safe_load((REPO / "deploy" / "ci" / "t3-nightly-smoke.yml").read_text())
    runs = [step["run"] for job in workflow["jobs"].values() for step in job["steps"] if "run" in step]
    command = next(r for r in runs if "t3track smoke" in r).replace("\\\n", " ")
    words = shlex.split(command.split("t3track", 1)[1].split(">")[0])
    options = {w for w in words if w.startswith("--")}
    help_text = subprocess.run([sys.executable, "-m", "t3track", "smoke", "--help"], capture_output=True, text=True,
                               env=dict(os.environ, PYTHONPATH=str(REPO / "src")), timeout=60).stdout
    assert options >= {"--from", "--junit", "--registry", "--json"}
    for option in options:
        assert option in help_text, option


# ---------------------------------------------------------------- the real T3 Code 0.0.42
# `t3track smoke` on the real T3 Code 0.0.42, `--from` an emulated 0.0.41.
#
# The real `@t3code/t3-linux-x64@0.0.42` tarball is published unchanged under a launcher `t3@0.0.42`
# (tests/real_t3.py's publish_real, upstream's layout), with an emulated 0.0.41 in the same layout, to a
# loopback registry that serves none of the real package's bundled modules. The smoke installs both with npm, serves
# 0.0.41 once on an empty scratch base dir (it creates the database with the real migration names
# and, at 52, the real schema), then the real server serves a sandbox copy of that database, pairs
# through the real handshake, and is asked whether a session the 0.0.41 server minted just before
# still authenticates. (Only the emulated builds migrate in these tests: which real migration makes
# which table is not known to the emulator, so it cannot stop a database half-way for the real one.)

REAL = "0.0.42"


@pytest.fixture(scope="module")
def real_registry():
    server = RegistryServer().start()
    # at 52 like the real one: the real server reads tables the emulator makes only at 52
    for name, tarball in emu.release_tarballs(OLD, migrations=52).items():
        server.publish(name, OLD, tarball)
    publish_real(server, tag="nightly")
    yield server
    server.stop()


@pytest.mark.real_server
def test_the_real_server_migrates_an_older_database_pairs_and_is_asked_about_old_sessions(tmp_path, real_registry):
    done = smoke(tmp_path, real_registry.url, REAL, "--from", OLD, "--executable", emu.RELEASE_EXECUTABLE,
                 serve_timeout=60)  # the real server takes seconds, more on a busy machine
    assert done.code == 0, done.result.stdout + done.result.stderr
    doc = done.doc
    gates = {g["name"]: g for g in doc["gates"]}
    assert gates["sandbox-serve"]["outcome"] == "pass"
    assert "0.0.42 ready on http://127.0.0.1:" in gates["sandbox-serve"]["detail"]
    assert "migrations 52 -> 52" in gates["sandbox-serve"]["detail"]  # on the database 0.0.41 made
    assert gates["pairing-probe"]["outcome"] == "pass"
    # checked either way, never "not checked": a session was minted on 0.0.41 first
    assert gates["sessions-survive"]["outcome"] in ("pass", "inconclusive")
    assert "not checked" not in gates["sessions-survive"]["detail"]
    cases = {c.get("name"): c for c in ET.parse(done.junit).getroot().iter("testcase")}
    assert set(cases) == {"sandbox-serve", "pairing-probe", "sessions-survive"}
    assert cases["pairing-probe"].find("failure") is None
    text = done.junit.read_text() + json.dumps(doc)
    for shape in SECRET_SHAPES:
        assert not shape.search(text)
