"""The T3 Code emulator follows the contract (shared/spec/t3code-contract.md) and each fault shows.

Every server is started through the `serve` fixture and killed by its process group in the fixture's
finalizer, which then asserts that none outlived the test. The `real_server` tests put the emulator
beside the real 0.0.42 and compare their answers to the same requests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from tests.emulator import package as emu

NIGHTLY = "0.0.43-nightly.20261101.3001"


@pytest.fixture
def serve():
    """start(executable, base_dir, port=None, **kw) -> ServerHandle; all are killed and checked dead afterwards."""
    started: list[emu.ServerHandle] = []

    def start(executable, base_dir, port=None, *, wait=True, timeout=15, env=None):
        handle = emu.start_server(executable, base_dir, port, wait=False, env=env)
        started.append(handle)
        if wait:
            handle.wait_ready(timeout)
        return handle

    yield start
    for handle in started:
        handle.stop()
    survivors = [handle.pid for handle in started if handle.alive()]
    assert survivors == [], f"servers outlived the test: {survivors}"


def install(tmp_path: Path, version: str = NIGHTLY, name: str = "prefix", **kwargs) -> Path:
    return emu.make_install(tmp_path / name / version, version, **kwargs)


def minted(executable: Path, base_dir: Path, ttl: str = "5m") -> dict:
    result = emu.mint(executable, base_dir, ttl)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def db_rows(base_dir: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(f"file:{emu.state_db(base_dir)}?mode=ro", uri=True) as conn:
        return conn.execute(sql).fetchall()


def _wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not _holds(condition):
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def _holds(condition) -> bool:
    try:
        return bool(condition())
    except (OSError, sqlite3.Error):
        return False


def session(url: str, cookie: str | None = None) -> dict:
    answer = emu.request(url, "GET", "/api/auth/session", headers={"Cookie": cookie} if cookie else None)
    assert answer.status == 200
    return answer.json()


# ---------------------------------------------------------------- the handshake, both eras


def test_version_flag_prints_the_configured_version(tmp_path):
    exe = install(tmp_path)
    result = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=10)
    assert (result.returncode, result.stdout) == (0, f"t3 v{NIGHTLY}\n")


def test_environment_endpoint_reports_the_configured_version(tmp_path, serve):
    server = serve(install(tmp_path), tmp_path / "base")
    document = emu.request(server.url, "GET", "/.well-known/t3/environment").json()
    assert document["serverVersion"] == NIGHTLY
    assert document["environmentId"] == (tmp_path / "base/userdata/environment-id").read_text().strip()
    assert {"label", "platform", "capabilities"} <= document.keys()


def test_web_app_paths_answer_200_html(tmp_path, serve):
    server = serve(install(tmp_path), tmp_path / "base")
    for path in ("/", "/health", "/api/health"):
        answer = emu.request(server.url, "GET", path)
        assert (answer.status, answer.header("content-type")) == (200, "text/html; charset=utf-8"), path


def test_startup_prints_the_real_lines_and_a_one_time_token_stored_in_the_database(tmp_path, serve):
    server = serve(install(tmp_path), tmp_path / "base")
    lines = server.output().splitlines()
    assert any(line.endswith(f"Listening on {server.url}") for line in lines)
    assert "T3 Code server is ready." in lines
    assert f"Connection string: {server.url}" in lines
    token = server.token()
    assert re.fullmatch(r"[A-Z0-9]{12}", token)
    assert f"Pairing URL: {server.url}/pair#token={token}" in lines
    assert db_rows(tmp_path / "base", f"SELECT subject FROM auth_pairing_links WHERE credential = '{token}'") == \
        [("administrative-bootstrap",)]


def test_era_b_cookieless_session_names_the_cookie_by_port_and_userdata_path(tmp_path, serve):
    base = tmp_path / "base"
    server = serve(install(tmp_path), base)
    document = session(server.url)
    import hashlib

    digest = hashlib.sha256(str(base / "userdata").encode()).hexdigest()[:12]
    assert document["authenticated"] is False
    assert document["auth"]["sessionCookieName"] == f"t3_session_{server.port}_{digest}"


def test_era_b_exchange_sets_a_cookie_that_authenticates_the_session(tmp_path, serve):
    exe = install(tmp_path)
    server = serve(exe, tmp_path / "base")
    credential = minted(exe, tmp_path / "base")["credential"]
    result = emu.exchange(server.url, credential)
    assert result.response.status == 200
    assert result.response.json().keys() == {"authenticated", "scopes", "sessionMethod", "expiresAt"}
    assert result.cookie_name == session(server.url)["auth"]["sessionCookieName"]
    assert [a.split("=")[0] for a in result.cookie_attributes] == ["Path", "Expires", "HttpOnly", "SameSite"]
    assert "SameSite=Lax" in result.cookie_attributes and "Path=/" in result.cookie_attributes
    authenticated = session(server.url, result.cookie_header)
    assert authenticated["authenticated"] is True and authenticated["scopes"] == result.response.json()["scopes"]
    assert db_rows(tmp_path / "base", "SELECT count(*) FROM auth_sessions") == [(1,)]


def test_era_b_answers_404_on_the_old_bootstrap_path(tmp_path, serve):
    exe = install(tmp_path)
    server = serve(exe, tmp_path / "base")
    credential = minted(exe, tmp_path / "base")["credential"]
    assert emu.exchange(server.url, credential, "/api/auth/bootstrap").response.status == 404
    assert emu.exchange(server.url, credential).response.status == 200  # the 404 did not consume it


def test_era_a_pairs_on_bootstrap_with_a_role_and_the_plain_cookie_name(tmp_path, serve):
    exe = install(tmp_path, "0.0.24", era="A")
    server = serve(exe, tmp_path / "base")
    credential = minted(exe, tmp_path / "base")["credential"]
    assert emu.exchange(server.url, credential).response.status == 404
    result = emu.exchange(server.url, credential, "/api/auth/bootstrap")
    assert result.response.status == 200
    assert result.response.json().keys() == {"authenticated", "role", "sessionMethod", "expiresAt"}
    assert result.cookie_name == "t3_session" == session(server.url)["auth"]["sessionCookieName"]
    assert session(server.url, result.cookie_header)["authenticated"] is True


def test_era_a_mint_prints_a_role_instead_of_scopes(tmp_path):
    exe = install(tmp_path, "0.0.24", era="A")
    document = minted(exe, tmp_path / "base")
    assert document.keys() == {"id", "credential", "role", "expiresAt"}
    assert document["role"] == "client"


def test_era_b_mint_prints_scopes_and_a_label_only_when_given(tmp_path):
    exe = install(tmp_path)
    assert minted(exe, tmp_path / "base").keys() == {"id", "credential", "scopes", "expiresAt"}
    labelled = subprocess.run([str(exe), "auth", "pairing", "create", "--base-dir", str(tmp_path / "base"),
                               "--label", "probe", "--json"], capture_output=True, text=True, timeout=10)
    assert json.loads(labelled.stdout)["label"] == "probe"


def test_mint_rejects_a_ttl_without_unit(tmp_path):
    exe = install(tmp_path)
    result = subprocess.run([str(exe), "auth", "pairing", "create", "--base-dir", str(tmp_path / "base"),
                             "--ttl", "5", "--json"], capture_output=True, text=True, timeout=10)
    assert result.returncode == 1 and "Invalid duration" in result.stderr and result.stdout == ""


def test_a_credential_is_refused_on_second_use(tmp_path, serve):
    exe = install(tmp_path)
    server = serve(exe, tmp_path / "base")
    credential = minted(exe, tmp_path / "base")["credential"]
    assert emu.exchange(server.url, credential).response.status == 200
    replay = emu.exchange(server.url, credential).response
    assert replay.status == 401
    assert {k: replay.json()[k] for k in ("code", "reason")} == {"code": "auth_invalid", "reason": "invalid_credential"}
    assert db_rows(tmp_path / "base", "SELECT consumed_at IS NOT NULL FROM auth_pairing_links "
                                      f"WHERE credential = '{credential}'") == [(1,)]


def test_an_expired_credential_is_refused(tmp_path, serve):
    exe = install(tmp_path)
    server = serve(exe, tmp_path / "base")
    credential = minted(exe, tmp_path / "base", ttl="0s")["credential"]
    assert emu.exchange(server.url, credential).response.status == 401


def test_an_empty_body_is_400_and_a_form_body_is_415(tmp_path, serve):
    server = serve(install(tmp_path), tmp_path / "base")
    assert emu.request(server.url, "POST", "/api/auth/browser-session", json_body={}).status == 400
    form = emu.request(server.url, "POST", "/api/auth/browser-session", body=b"credential=x",
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form.status == 415


# ---------------------------------------------------------------- state on disk


def test_state_layout_is_wal_sqlite_with_private_secrets(tmp_path, serve):
    base = tmp_path / "base"
    serve(install(tmp_path), base)
    userdata = base / "userdata"
    assert db_rows(base, "PRAGMA journal_mode") == [("wal",)]
    assert stat.S_IMODE((userdata / "secrets").stat().st_mode) == 0o700
    keys = sorted(userdata.glob("secrets/*.bin"))
    assert [k.name for k in keys] == ["cloud-link-ed25519-key-pair.bin", "server-signing-key.bin"]
    assert all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in keys)
    assert re.fullmatch(r"[0-9a-f-]{36}\n", (userdata / "environment-id").read_text())


def test_server_runtime_json_exists_while_serving_and_is_removed_on_sigterm(tmp_path, serve):
    base = tmp_path / "base"
    server = serve(install(tmp_path), base)
    runtime = json.loads((base / "userdata/server-runtime.json").read_text())
    assert {k: runtime[k] for k in ("pid", "host", "port", "origin")} == \
        {"pid": server.pid, "host": "127.0.0.1", "port": server.port, "origin": server.url}
    assert server.stop() == 0
    assert not (base / "userdata/server-runtime.json").exists()


def test_start_applies_missing_migrations_up_to_the_configured_one(tmp_path, serve):
    base = tmp_path / "base"
    emu.make_user_state(base, migrations=40)
    server = serve(install(tmp_path, migrations=53), base)
    rows = db_rows(base, "SELECT migration_id, name FROM effect_sql_migrations ORDER BY 1")
    assert [r[0] for r in rows] == list(range(1, 54))
    assert rows[30] == (31, "AuthAuthorizationScopes") and rows[51] == (52, "ProjectionThreadTitleState")
    assert "'41_AuthSessionClientConnection'" in server.output() and "'40_" not in server.output()


def test_migration_31_deletes_existing_sessions(tmp_path, serve):
    base, port = tmp_path / "base", emu.free_port()
    old = install(tmp_path, "0.0.24", era="A", migrations=30)
    server = serve(old, base, port)
    pairing = emu.pair(server.url, minted(old, base)["credential"])
    assert pairing.response.status == 200
    server.stop()
    assert db_rows(base, "SELECT count(*) FROM auth_sessions") == [(1,)]
    server = serve(install(tmp_path, migrations=52), base, port)
    assert db_rows(base, "SELECT count(*) FROM auth_sessions") == [(0,)]
    assert session(server.url, pairing.cookie_header)["authenticated"] is False


def test_sessions_survive_a_restart_and_an_upgrade_without_migration_31(tmp_path, serve):
    base, port = tmp_path / "base", emu.free_port()
    exe = install(tmp_path, "0.0.42")
    server = serve(exe, base, port)
    pairing = emu.exchange(server.url, minted(exe, base)["credential"])
    server.stop()
    server = serve(install(tmp_path, NIGHTLY, migrations=53), base, port)
    assert session(server.url, pairing.cookie_header)["authenticated"] is True


def test_an_older_binary_starts_on_a_newer_database_and_warns(tmp_path, serve):
    base = tmp_path / "base"
    emu.make_user_state(base, migrations=53)
    server = serve(install(tmp_path, "0.0.42", migrations=52), base)
    assert "Database is at migration 53, newer than this server (52)" in server.output()
    assert emu.migration_ids(emu.state_db(base))[-1] == 53


def test_an_era_a_binary_on_a_scopes_database_serves_but_cannot_pair(tmp_path, serve):
    base = tmp_path / "base"
    emu.make_user_state(base, migrations=52)
    exe = install(tmp_path, "0.0.24", era="A", migrations=30)
    server = serve(exe, base)
    assert server.token() is None  # the startup token could not be written
    assert emu.mint(exe, base).returncode == 1


def test_start_delay_holds_the_port_closed_and_sigterm_still_stops_it(tmp_path, serve):
    server = serve(install(tmp_path, start_delay_s=60), tmp_path / "base", wait=False)
    _wait_for(lambda: emu.migration_ids(emu.state_db(tmp_path / "base"))[-1:] == [52])  # past its startup
    with pytest.raises(ConnectionRefusedError):
        emu.request(server.url, "GET", "/", timeout=1)
    assert server.stop() == 0


def test_a_busy_port_makes_serve_exit_1_without_moving_elsewhere(tmp_path, serve):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = serve(install(tmp_path), tmp_path / "base", taken.getsockname()[1], wait=False)
        assert server.proc.wait(timeout=10) == 1
    assert "address already in use" in server.output().lower() or "EADDRINUSE" in server.output()
    assert not (tmp_path / "base/userdata/server-runtime.json").exists()


# ---------------------------------------------------------------- faults


def test_fault_no_cookie_answers_authenticated_without_set_cookie(tmp_path, serve):
    exe = install(tmp_path, fault="no-cookie")
    server = serve(exe, tmp_path / "base")
    result = emu.exchange(server.url, minted(exe, tmp_path / "base")["credential"])
    assert (result.response.status, result.response.json(), result.cookie_name) == (200, {"authenticated": True}, None)


def test_fault_renamed_endpoint_answers_404_on_both_paths(tmp_path, serve):
    exe = install(tmp_path, fault="renamed-endpoint")
    server = serve(exe, tmp_path / "base")
    credential = minted(exe, tmp_path / "base")["credential"]
    assert emu.pair(server.url, credential).response.status == 404
    assert emu.exchange(server.url, credential).response.status == 404


def test_fault_reusable_credential_accepts_a_second_use(tmp_path, serve):
    exe = install(tmp_path, fault="reusable-credential")
    server = serve(exe, tmp_path / "base")
    credential = minted(exe, tmp_path / "base")["credential"]
    assert [emu.exchange(server.url, credential).response.status for _ in range(2)] == [200, 200]


def test_fault_cookie_not_accepted_issues_a_cookie_the_session_refuses(tmp_path, serve):
    exe = install(tmp_path, fault="cookie-not-accepted")
    server = serve(exe, tmp_path / "base")
    result = emu.exchange(server.url, minted(exe, tmp_path / "base")["credential"])
    assert result.cookie_name == session(server.url)["auth"]["sessionCookieName"]
    assert session(server.url, result.cookie_header)["authenticated"] is False


def test_fault_wrong_cookie_name_issues_a_cookie_the_session_does_not_name(tmp_path, serve):
    exe = install(tmp_path, fault="wrong-cookie-name")
    server = serve(exe, tmp_path / "base")
    result = emu.exchange(server.url, minted(exe, tmp_path / "base")["credential"])
    assert result.response.status == 200 and result.cookie_name
    assert result.cookie_name != session(server.url)["auth"]["sessionCookieName"]
    assert session(server.url, result.cookie_header)["authenticated"] is False


def test_fault_crash_on_start_exits_1_with_an_error_after_migrating(tmp_path, serve):
    base = tmp_path / "base"
    server = serve(install(tmp_path, fault="crash-on-start"), base, wait=False)
    assert server.proc.wait(timeout=10) == 1
    assert "ERROR" in server.output() and "T3 Code server is ready." not in server.output()
    assert not (base / "userdata/server-runtime.json").exists()
    assert emu.migration_ids(emu.state_db(base))[-1] == 52


def test_fault_never_ready_serves_the_web_app_but_503_on_the_environment(tmp_path, serve):
    server = serve(install(tmp_path, fault="never-ready"), tmp_path / "base", wait=False)
    _wait_for(lambda: emu.request(server.url, "GET", "/").status == 200)
    with pytest.raises(TimeoutError):
        server.wait_ready(timeout=0.3)
    assert emu.request(server.url, "GET", "/.well-known/t3/environment").status == 503


def test_fault_env_hangs_never_answers_the_environment(tmp_path, serve):
    server = serve(install(tmp_path, fault="env-hangs"), tmp_path / "base", wait=False)
    _wait_for(lambda: emu.request(server.url, "GET", "/").status == 200)
    with pytest.raises(TimeoutError):
        server.wait_ready(timeout=0.3)
    with pytest.raises(TimeoutError):
        emu.request(server.url, "GET", "/.well-known/t3/environment", timeout=0.5)


def test_fault_wrong_version_reports_another_server_version(tmp_path, serve):
    server = serve(install(tmp_path, fault="wrong-version"), tmp_path / "base")
    assert emu.request(server.url, "GET", "/.well-known/t3/environment").json()["serverVersion"] == "0.0.42"


def test_fault_exchange_500_fails_the_exchange(tmp_path, serve):
    exe = install(tmp_path, fault="exchange-500")
    server = serve(exe, tmp_path / "base")
    assert emu.exchange(server.url, minted(exe, tmp_path / "base")["credential"]).response.status == 500


def test_fault_mint_fails_exits_1_and_stores_no_credential(tmp_path):
    exe = install(tmp_path, fault="mint-fails")
    result = emu.mint(exe, tmp_path / "base")
    assert result.returncode == 1 and result.stdout == "" and "ERROR" in result.stderr
    assert not emu.state_db(tmp_path / "base").exists()


def test_a_live_only_fault_acts_only_with_t3emu_live(tmp_path, serve):
    exe = install(tmp_path, fault="no-cookie-live")
    sandbox = serve(exe, tmp_path / "sandbox")
    live = serve(exe, tmp_path / "live", env={"T3EMU_LIVE": "1"})
    assert emu.exchange(sandbox.url, minted(exe, tmp_path / "sandbox")["credential"]).cookie_name
    assert emu.exchange(live.url, minted(exe, tmp_path / "live")["credential"]).cookie_name is None


def test_configure_flips_the_behaviour_of_an_installed_build(tmp_path, serve):
    exe = install(tmp_path)
    emu.configure(exe, fault="renamed-endpoint")
    server = serve(exe, tmp_path / "base")
    assert emu.pair(server.url, minted(exe, tmp_path / "base")["credential"]).response.status == 404


def test_an_unknown_fault_is_refused(tmp_path):
    exe = install(tmp_path, fault="gremlins")
    result = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=10)
    assert result.returncode != 0 and "unknown fault" in result.stderr


# ---------------------------------------------------------------- packaging helpers


def test_make_install_lays_out_an_npm_install(tmp_path):
    exe = emu.make_install(tmp_path / "p", NIGHTLY)
    assert exe == tmp_path / "p" / emu.EXECUTABLE and os.access(exe, os.X_OK)
    assert json.loads((tmp_path / "p/node_modules/t3/package.json").read_text())["version"] == NIGHTLY
    assert json.loads((exe.parent / "emulator.json").read_text())["migrations"] == 52
    assert (tmp_path / "p/node_modules/.bin/t3").resolve() == exe.resolve()


def test_pack_tarball_is_an_npm_tarball_with_a_matching_integrity(tmp_path):
    path = emu.pack_tarball(tmp_path, NIGHTLY, fault="no-cookie")
    with tarfile.open(path) as archive:
        names = {m.name: m for m in archive.getmembers()}
        manifest = json.load(archive.extractfile("package/package.json"))
        settings = json.load(archive.extractfile("package/bin/emulator.json"))
    bundled = {n for n in names if n.startswith("package/node_modules/")}
    assert set(names) - bundled == {"package/package.json", "package/bin/t3", "package/bin/emulator.json"}
    assert {f"package/node_modules/{name}/package.json" for name in emu.BUNDLED} < bundled
    assert "package/node_modules/emu-pty/node_modules/emu-addon-api/package.json" in bundled
    assert names["package/bin/t3"].mode == 0o755
    assert manifest == {"name": "t3", "version": NIGHTLY, "bin": {"t3": "bin/t3"}, "license": "MIT",
                        "dependencies": emu.BUNDLED, "bundleDependencies": sorted(emu.BUNDLED)}
    assert settings["fault"] == "no-cookie" and settings["native_modules"] == sorted(emu.BUNDLED)
    import base64
    import hashlib

    assert emu.tarball_integrity(path) == "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm not installed")
def test_npm_installs_the_packed_tarball_into_a_runnable_t3(tmp_path):
    tarball = emu.pack_tarball(tmp_path / "dist", NIGHTLY)
    prefix = tmp_path / "prefix"
    result = subprocess.run(["npm", "install", "--prefix", str(prefix), "--offline", "--no-audit", "--no-fund",
                             "--ignore-scripts", "--cache", str(tmp_path / "cache"), str(tarball)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    version = subprocess.run([str(prefix / emu.EXECUTABLE), "--version"], capture_output=True, text=True, timeout=10)
    assert version.stdout == f"t3 v{NIGHTLY}\n"
    # its native modules came out of its own tarball (--offline: nothing else could be fetched)
    lock = json.loads((prefix / "package-lock.json").read_text())["packages"]
    assert lock["node_modules/t3/node_modules/emu-pty"] == {"version": "1.1.0", "inBundle": True, "license": "MIT",
                                                            "dependencies": {"emu-addon-api": "7.1.1"}}


def test_a_build_whose_bundled_native_module_is_missing_does_not_start(tmp_path):
    tarball = emu.pack_tarball(tmp_path / "dist", NIGHTLY)
    prefix = tmp_path / "prefix"
    with tarfile.open(tarball) as archive:
        archive.extractall(prefix, filter="data")
    shutil.rmtree(prefix / "package/node_modules/emu-pty")
    done = subprocess.run([str(prefix / "package/bin/t3"), "--version"], capture_output=True, text=True, timeout=10)
    assert done.returncode != 0 and "Cannot find module 'emu-pty'" in done.stderr


def test_make_user_state_builds_a_realistic_base_dir(tmp_path):
    state = emu.make_user_state(tmp_path / "alice", migrations=52, rows=7)
    assert emu.migration_ids(state.db) == list(range(1, 53))
    assert db_rows(state.base_dir, f"SELECT count(*) FROM {emu.ROWS_TABLE}") == [(7,)]
    for name in ("environment-id", "settings.json", "keybindings.json", "secrets/server-signing-key.bin"):
        assert (state.base_dir / "userdata" / name).exists(), name
    assert not (state.base_dir / "userdata/server-runtime.json").exists()


def test_add_rows_writes_tagged_threads_beside_a_running_server(tmp_path, serve):
    state = emu.make_user_state(tmp_path / "alice", rows=2)
    serve(install(tmp_path), state.base_dir)
    emu.add_rows(state.db, 3, "after-swap")
    assert db_rows(state.base_dir, f"SELECT count(*) FROM {emu.ROWS_TABLE} WHERE title LIKE 'after-swap%'") == [(3,)]


# ---------------------------------------------------------------- side by side with the real 0.0.42


def _handshake_view(executable: Path, base: Path, serve) -> dict:
    """What a client sees of one server: statuses, JSON keys, cookie shape."""
    server = serve(executable, base, timeout=30)
    view = {"environment_keys": sorted(emu.request(server.url, "GET", "/.well-known/t3/environment").json())}
    anonymous = session(server.url)
    view["anonymous"] = (sorted(anonymous), sorted(anonymous["auth"]), anonymous["authenticated"])
    cookie_name = anonymous["auth"]["sessionCookieName"]
    view["cookie_name_shape"] = re.sub(r"\d+_[0-9a-f]{12}$", "PORT_HASH", cookie_name)
    mint_document = minted(executable, base)
    view["mint_keys"] = sorted(mint_document)
    credential = mint_document["credential"]
    view["bootstrap_status"] = emu.exchange(server.url, credential, "/api/auth/bootstrap").response.status
    result = emu.exchange(server.url, credential)
    view["exchange"] = (result.response.status, sorted(result.response.json()), result.response.json()["scopes"])
    view["exchange_headers"] = {h: result.response.header(h) for h in ("content-type", "cache-control", "pragma")}
    view["cookie"] = (result.cookie_name == cookie_name,
                      [a.split("=")[0] for a in result.cookie_attributes],
                      [a for a in result.cookie_attributes if not a.startswith("Expires=")])
    authenticated = session(server.url, result.cookie_header)
    view["authenticated"] = (sorted(authenticated), authenticated["authenticated"])
    replay = emu.exchange(server.url, credential).response
    view["replay"] = (replay.status, sorted(replay.json()), replay.json()["code"], replay.json()["reason"])
    view["empty_body"] = emu.request(server.url, "POST", "/api/auth/browser-session", json_body={}).status
    view["form_body"] = emu.request(server.url, "POST", "/api/auth/browser-session", body=b"credential=x",
                                    headers={"Content-Type": "application/x-www-form-urlencoded"}).status
    view["web_app"] = [emu.request(server.url, "GET", p).status for p in ("/", "/health", "/api/health")]
    view["token_shape"] = bool(re.fullmatch(r"[A-Z0-9]{12}", server.token() or ""))
    server.stop()
    view["runtime_json_after_stop"] = (base / "userdata/server-runtime.json").exists()
    view["migrations"] = db_rows(base, "SELECT migration_id, name FROM effect_sql_migrations ORDER BY 1")
    view["auth_columns"] = {t: sorted(r[1] for r in db_rows(base, f"PRAGMA table_info({t})"))
                            for t in ("auth_pairing_links", "auth_sessions")}
    view["secrets"] = sorted(p.name for p in (base / "userdata/secrets").iterdir())
    return view


@pytest.mark.real_server
def test_emulator_era_b_answers_like_the_real_0_0_42(tmp_path, serve, real_t3):
    # real_t3 installs the real executable into the test cache when it is not there: this runs every time
    real = _handshake_view(real_t3, tmp_path / "real", serve)
    emulated = _handshake_view(install(tmp_path, "0.0.42"), tmp_path / "emulated", serve)
    assert real == emulated

