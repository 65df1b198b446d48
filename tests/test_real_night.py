"""A whole night with the real T3 Code server: bumped in through every gate, then guarded.

The host starts on an emulated 0.0.41 (Era B, migrations 1..52) serving state that the REAL 0.0.42
created (each user's base dir is made by starting the real server on it once). The emulator uses the
real migration names and the real auth tables' columns, so both read the same database: the old
emulated version serves and pairs on it before the night, and the real server serves it after.

The host is in upstream's release layout (the launcher `t3` and its optional dependency
`@t3code/t3-linux-x64` holding the executable). The real `@t3code/t3-linux-x64@0.0.42` tarball is
published unchanged to the loopback registry, under a launcher `t3@0.0.42` tagged `nightly`
(tests/real_t3.py's publish_real): npm takes its bundled native modules out of that tarball, and the
registry has none of them. 0.0.42 is a stable version, so the channel policy would refuse it: the operator pins it, and `t3track run`
brings it in through backup-present, sandbox-serve and pairing-probe on a sandbox copy, swaps, and
verifies the real server live. Then, unpinned, a broken nightly (200 without a cookie) is refused at
pairing-probe with evidence while the real 0.0.42 keeps serving.

The night runs once per module (fixtures `bumped` and `refused`); each test checks one consequence.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tests import real_t3
from tests.emulator import package as emu
from tests.real_t3 import SECRET_SHAPES, platform_tarball, publish_real
from tests.support.host import Host, build_host
from tests.support.registry_server import RegistryServer

pytestmark = [pytest.mark.real_server, pytest.mark.slow]

OLD = "0.0.41"
REAL = "0.0.42"
BROKEN = "0.0.43-nightly.20261201.3100"


# ---------------------------------------------------------------- the night, run once for the module


@dataclass
class Step:
    """One t3track command as the operator ran it."""
    result: subprocess.CompletedProcess

    @property
    def doc(self) -> dict:
        return json.loads(self.result.stdout)

    @property
    def output(self) -> str:
        return self.result.stdout + self.result.stderr


@dataclass
class Night:
    before: dict[str, str | None]            # user -> serverVersion before the night
    probes_before: list[Step]                # `t3track probe` against each emulated old server
    backup: Step
    pin: Step
    run: Step
    pids_before: dict[str, int]
    pids_after: dict[str, int]
    seen_secrets: set[str] = field(default_factory=set, repr=False)  # what the test saw when it paired


MODEL_SELECTION = '{"provider":"codex","model":"gpt-5-codex"}'


def real_user_state(executable: Path, base_dir: Path, rows: int = 5) -> None:
    """A user's base dir as the real 0.0.42 leaves it, plus `rows` threads of user data.

    emu.add_rows writes the columns the emulator knows; the real server also needs
    `model_selection_json` (NULL there makes 0.0.42 exit 1 with a PersistenceDecodeError, which
    sandbox-serve rightly refuses), so it is set to the shape the real migration 16 writes."""
    real_t3.make_real_state(executable, base_dir)
    ids = emu.add_rows(emu.state_db(base_dir), rows, "initial")
    with sqlite3.connect(emu.state_db(base_dir)) as conn:
        conn.executemany("UPDATE projection_threads SET model_selection_json = ? WHERE thread_id = ?",
                         [(MODEL_SELECTION, thread_id) for thread_id in ids])
    conn.close()


USERS = ("alice", "bob")


@pytest.fixture(scope="module")
def host(real_t3: Path, tmp_path_factory: pytest.TempPathFactory) -> Host:
    # each user's state made by its own start of the real server, both at once (seconds each)
    made = tmp_path_factory.mktemp("real-states")
    with ThreadPoolExecutor(len(USERS)) as pool:
        list(pool.map(lambda name: real_user_state(real_t3, made / name / ".t3"), USERS))
    h = build_host(tmp_path_factory.mktemp("real-night"), users=USERS, current=OLD, current_migrations=52, rows=0,
                   make_state=lambda base: shutil.copytree(made / base.parent.name / ".t3", base, symlinks=True),
                   layout="release")
    assert isinstance(h.registry, RegistryServer)
    publish_real(h.registry, tag="nightly")
    yield h
    h.close()


def pair_with(host: Host, user) -> set[str]:  # noqa: ANN001
    """Pair with a live server as a browser would, with the one-time `Token:` its start printed (in
    the supervisor's log); return the token and the cookie value, so the test can look for them
    where they must never be."""
    log = (host.run_dir / f"{user.name}.log").read_text(errors="replace")
    token = re.findall(r"^Token: (\S+)$", log, re.M)[-1]
    pairing = emu.pair(user.url, token)
    assert pairing.response.status == 200 and pairing.cookie_value, f"{user.name}: the live server did not pair"
    session = emu.request(user.url, "GET", "/api/auth/session", headers={"Cookie": pairing.cookie_header})
    assert session.json()["authenticated"] is True
    return {token, pairing.cookie_value}


@pytest.fixture(scope="module")
def bumped(host: Host) -> Night:
    before = {u.name: host.serving(u) for u in host.users}
    probes = [Step(host.t3track("probe", "--url", u.url, "--base-dir", str(u.base_dir), "--json")) for u in host.users]
    backup = Step(host.t3track("backup"))
    pin = Step(host.t3track("pin", REAL, "--reason", "first real release on this host", "--json"))
    pids_before = host.server_pids()
    run = Step(host.t3track("run", "--json"))
    night = Night(before, probes, backup, pin, run, pids_before, host.server_pids())
    if run.result.returncode == 0:
        for user in host.users:
            night.seen_secrets |= pair_with(host, user)
    return night


@dataclass
class Refusal:
    unpin: Step
    run: Step
    pids_before: dict[str, int]
    pids_after: dict[str, int]
    serving: dict[str, str | None]


@pytest.fixture(scope="module")
def refused(host: Host, bumped: Night) -> Refusal:
    assert bumped.run.result.returncode == 0, "the real 0.0.42 was not swapped in; nothing to guard"
    unpin = Step(host.t3track("unpin", "--json"))
    host.publish(BROKEN, fault="no-cookie")
    pids_before = host.server_pids()
    run = Step(host.t3track("run", "--json"))
    return Refusal(unpin, run, pids_before, host.server_pids(), {u.name: host.serving(u) for u in host.users})


def live_credentials(host: Host) -> set[str]:
    """Every pairing credential in the users' live databases: the startup tokens of every production
    start and whatever t3track minted for its live checks (the real server keeps them in plain text)."""
    found = set()
    for user in host.users:
        with sqlite3.connect(f"file:{user.db}?mode=ro", uri=True) as conn:
            found |= {row[0] for row in conn.execute("SELECT credential FROM auth_pairing_links")}
    return found


def files_under(*roots: Path) -> list[Path]:
    return [p for root in roots if root.exists() for p in ([root] if root.is_file() else root.rglob("*")) if p.is_file()]




# ---------------------------------------------------------------- before the night


def test_the_emulated_old_version_serves_and_pairs_on_state_the_real_server_created(host, bumped):
    assert bumped.before == {u.name: OLD for u in host.users}
    for user in host.users:
        names = [row[0] for row in sqlite3.connect(f"file:{user.db}?mode=ro", uri=True).execute(
            "SELECT name FROM effect_sql_migrations ORDER BY migration_id")]
        assert len(names) == 52 and names[-1] == "ProjectionThreadTitleState"
    for step in bumped.probes_before:
        assert step.result.returncode == 0, step.output
        assert step.doc["ok"] is True


# ---------------------------------------------------------------- the bump to the real server


def test_the_pinned_real_release_passes_every_gate_against_the_real_server(bumped):
    assert bumped.backup.result.returncode == 0, bumped.backup.output
    assert bumped.pin.result.returncode == 0, bumped.pin.output
    doc = bumped.run.doc
    assert bumped.run.result.returncode == 0, bumped.run.output
    assert doc["outcome"] == "swapped" and doc["candidate"] == REAL
    assert doc["from"] == OLD and doc["to"] == REAL
    outcomes = {(g["name"], g["user"]): g["outcome"] for g in doc["gates"]}
    for user in ("alice", "bob"):
        for gate in ("backup-present", "sandbox-serve", "pairing-probe", "live-verify"):
            assert outcomes[(gate, user)] == "pass", (gate, user, doc["gates"])


def test_the_swap_points_current_at_the_real_release_and_records_it(host, bumped):
    assert host.current_target() == f"versions/{REAL}"
    installed = host.root / "versions" / REAL / host.executable
    assert installed.is_file() and os.access(installed, os.X_OK)
    assert emu.settings_path(installed).exists() is False        # the real binary, not an emulator build
    # as npm ships it: the real platform package with its bundled native modules, recorded as bundled
    lock = json.loads((host.root / "versions" / REAL / "package-lock.json").read_text())["packages"]
    platform = f"node_modules/{real_t3.PACKAGE}"
    assert lock[platform]["integrity"] == real_t3.sri_sha512(platform_tarball().read_bytes())
    bundled = {path for path, entry in lock.items() if entry.get("inBundle")}
    assert f"{platform}/node_modules/node-pty" in bundled
    assert f"{platform}/node_modules/@ff-labs/fff-bin-linux-x64-gnu" in bundled
    assert (host.root / "versions" / REAL / platform / "node_modules" / "node-pty" / "package.json").is_file()
    assert not [r.path for r in host.registry.requests if "ff-labs" in r.path or "node-pty" in r.path]
    state = host.state()
    assert state["current"] == REAL and state["previous"] == OLD
    assert state["pinned"]["version"] == REAL
    run = next(e for e in reversed(host.history()) if e["event"] == "run")
    assert run["outcome"] == "swapped" and run["from"] == OLD and run["to"] == REAL
    assert not (host.state_dir / "journal.json").exists()


def test_every_user_is_served_by_the_real_release_after_the_swap(host, bumped):
    for user in host.users:
        assert host.serving(user) == REAL
        assert bumped.pids_after[user.name] != bumped.pids_before[user.name]   # restarted, not the old process
        # the users' threads written before the night are still there for the real server
        assert sorted(row[2] for row in host.rows(user)) == [f"initial thread {i}" for i in range(5)]
    assert bumped.seen_secrets                                                   # and a browser pairs with it


# ---------------------------------------------------------------- a broken nightly after it


def test_a_broken_nightly_is_refused_at_pairing_probe_with_evidence(host, refused):
    assert refused.unpin.result.returncode == 0, refused.unpin.output
    doc = refused.run.doc
    assert refused.run.result.returncode == 1, refused.run.output
    assert doc["outcome"] == "refused" and doc["candidate"] == BROKEN
    failed = next(g for g in doc["gates"] if g["outcome"] != "pass")
    assert failed["name"] == "pairing-probe"
    evidence = Path(doc["evidence"])
    probe_result = json.loads((evidence / f"{failed['user']}.pairing-probe.json").read_text())
    assert probe_result["ok"] is False and probe_result["step"] == "cookie"
    run = next(e for e in reversed(host.history()) if e["event"] == "run")
    assert run["outcome"] == "refused" and run["candidate"] == BROKEN


def test_the_real_release_keeps_serving_untouched_after_the_refusal(host, refused):
    assert host.current_target() == f"versions/{REAL}"
    assert host.state()["current"] == REAL
    assert refused.serving == {u.name: REAL for u in host.users}
    assert refused.pids_after == refused.pids_before                   # no restart for a refused candidate


def test_no_credential_or_cookie_value_is_written_or_printed(host, bumped, refused):
    steps = [*bumped.probes_before, bumped.backup, bumped.pin, bumped.run, refused.unpin, refused.run]
    secrets = bumped.seen_secrets | live_credentials(host)
    assert len(secrets) >= 2 * len(host.users)        # startup tokens, t3track's live mints, the test's own
    files = files_under(host.state_dir / "evidence", host.state_dir / "history.jsonl", host.state_dir / "state.json")
    assert any(p.name.endswith("pairing-probe.json") for p in files)
    leaks = real_t3.files_containing(files, sorted(secrets))
    leaks += [f"output of t3track {' '.join(s.result.args[5:])}: {v[:3]}…" for s in steps for v in secrets if v in s.output]
    leaks += [f"{p}: {m.group(0)[:14]}…" for p in files for shape in SECRET_SHAPES
              for m in shape.finditer(p.read_text(errors="replace"))]
    assert leaks == []


def parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, IndexError, ValueError):
        return 0


def descends_from(pid: int, ancestors: set[int]) -> bool:
    while pid > 1:
        if pid in ancestors:
            return True
        pid = parent(pid)
    return False


def test_no_sandbox_outlives_the_night(host, refused):
    # the production servers and their children (the real one starts a resource monitor in a session
    # of its own) are expected; anything else running an installed build is a sandbox left behind
    production = set(host.server_pids().values())
    running = real_t3.processes_mentioning(str(host.root))
    assert production <= set(running)
    strays = {pid: Path(f"/proc/{pid}/cmdline").read_bytes()[:200] for pid in running
              if not descends_from(pid, production)}
    assert strays == {}
