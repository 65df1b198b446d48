"""`t3track smoke` on the real T3 Code 0.0.42, `--from` an emulated 0.0.41.

The real `@t3code/t3-linux-x64@0.0.42` is re-packed as `t3@0.0.42` (tests/test_real_night.py) and
published with an emulated 0.0.41 to a loopback registry. The smoke installs both with npm, serves
0.0.41 once on an empty scratch base dir (it creates the database with the real migration names
and, at 52, the real schema), then the real server serves a sandbox copy of that database, pairs
through the real handshake, and is asked whether a session the 0.0.41 server minted just before
still authenticates. (Only the emulated builds migrate in these tests: which real migration makes
which table is not known to the emulator, so it cannot stop a database half-way for the real one.)
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from tests.emulator import package as emu
from tests.real_t3 import real_t3 as real_t3_fixture  # noqa: F401  (the session-scoped install)
from tests.support.registry_server import RegistryServer
from tests.test_real_night import repacked_real_t3
from tests.test_smoke import SECRET_SHAPES, smoke

pytestmark = [pytest.mark.real_server, pytest.mark.slow]

OLD = "0.0.41"
REAL = "0.0.42"


@pytest.fixture(scope="module")
def registry(real_t3_fixture):  # noqa: F811
    server = RegistryServer().start()
    # at 52 like the real one: the real server reads tables the emulator makes only at 52
    server.publish("t3", OLD, emu.tarball_bytes(OLD, migrations=52))
    server.publish("t3", REAL, repacked_real_t3(real_t3_fixture).read_bytes(), tag="nightly")
    yield server
    server.stop()


def test_the_real_server_migrates_an_older_database_pairs_and_is_asked_about_old_sessions(tmp_path, registry):
    done = smoke(tmp_path, registry.url, REAL, "--from", OLD, "--executable", emu.EXECUTABLE,
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
