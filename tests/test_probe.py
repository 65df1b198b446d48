"""The pairing probe: every step of the handshake, what makes each one fail, and that no secret leaks.

Unit tests drive the HTTP side through respx and mint with a tiny script; the real 0.0.42 server and
the emulators prove the same code against servers that actually run.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import respx
from tests.real_t3 import serving
from typer.testing import CliRunner

from t3track.cli import app
from t3track.errors import UsageError
from t3track.host import probe
from t3track.results import to_jsonable

URL = "http://127.0.0.1:38773"
CREDENTIAL = "PGH54ZK8TXMA"
COOKIE_NAME = "t3_session_38773_d03213e4ea74"
COOKIE_VALUE = "eyJ2IjoxLCJzaWQiOiJhYmMifQ.signature-value"


def minter(tmp_path: Path, credential: str | None = CREDENTIAL, exit_code: int = 0) -> Path:
    """An executable that answers `auth pairing create ... --json` like T3 Code does."""
    script = tmp_path / "t3"
    doc = json.dumps({"id": "x", "credential": credential, "scopes": [], "expiresAt": "2026-01-01T00:00:00Z"})
    script.write_text(f"#!{sys.executable}\nimport sys\nprint({doc!r})\nsys.exit({exit_code})\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


class FakeT3:
    """Era B by default, as respx routes; flags break one contract point each."""

    def __init__(self, router: respx.MockRouter, *, era: str = "B", set_cookie: bool = True,
                 cookie_name: str | None = None, reusable: bool = False, exchange_status: int = 200,
                 replay_ok: bool = True, echo_credential: bool = False):
        self.era, self.used, self.set_cookie, self.reusable = era, set(), set_cookie, reusable
        self.exchange_status, self.replay_ok, self.echo = exchange_status, replay_ok, echo_credential
        self.name = cookie_name or (COOKIE_NAME if era == "B" else "t3_session")
        self.calls: list[str] = []
        router.get(f"{URL}/api/auth/session").mock(side_effect=self.session)
        router.post(f"{URL}/api/auth/browser-session").mock(side_effect=self.exchange("/api/auth/browser-session"))
        router.post(f"{URL}/api/auth/bootstrap").mock(side_effect=self.exchange("/api/auth/bootstrap"))

    def session(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(f"GET {request.url.path}")
        authed = f"{self.name}={COOKIE_VALUE}" in request.headers.get("cookie", "") and self.replay_ok
        body: dict = {"authenticated": authed}
        if self.era == "B":
            body["auth"] = {"sessionCookieName": COOKIE_NAME}
        return httpx.Response(200, json=body)

    def exchange(self, path: str):  # noqa: ANN201
        def answer(request: httpx.Request) -> httpx.Response:
            self.calls.append(f"POST {path}")
            mine = "/api/auth/browser-session" if self.era == "B" else "/api/auth/bootstrap"
            if path != mine:
                return httpx.Response(404)
            credential = json.loads(request.content).get("credential")
            if self.exchange_status != 200:
                text = f"nope for {credential}" if self.echo else "nope"
                return httpx.Response(self.exchange_status, json={"code": "auth_invalid", "reason": text})
            if credential in self.used and not self.reusable:
                return httpx.Response(401, json={"code": "auth_invalid", "reason": "invalid_credential"})
            self.used.add(credential)
            headers = [("set-cookie", f"{self.name}={COOKIE_VALUE}; Path=/; HttpOnly; SameSite=Lax")] if self.set_cookie else []
            return httpx.Response(200, json={"authenticated": True}, headers=headers)
        return answer


def run_probe(tmp_path: Path, **kwargs) -> probe.ProbeResult:  # noqa: ANN003
    executable = kwargs.pop("executable", None) or minter(tmp_path)
    return probe.pairing_probe(URL, tmp_path / "base", executable, timeout=5, **kwargs)


# ---------------------------------------------------------------- the handshake, step by step


def test_era_b_handshake_passes_with_the_cookie_name_the_server_announces(tmp_path):
    with respx.mock(assert_all_called=False) as router:
        fake = FakeT3(router)
        result = run_probe(tmp_path)
    assert result.ok and result.step == "done"
    assert result.cookie_name == COOKIE_NAME
    assert result.exchange_path == "/api/auth/browser-session"
    assert [s.name for s in result.steps] == ["session", "mint", "exchange", "cookie", "replay", "one-time"]
    assert "POST /api/auth/bootstrap" not in fake.calls


def test_era_a_is_reached_through_bootstrap_after_a_404(tmp_path):
    with respx.mock(assert_all_called=False) as router:
        fake = FakeT3(router, era="A")
        result = run_probe(tmp_path)
    assert result.ok
    assert result.cookie_name == "t3_session"  # no auth.sessionCookieName in the answer
    assert result.exchange_path == "/api/auth/bootstrap"
    assert fake.calls.count("POST /api/auth/browser-session") == 1


def test_bootstrap_is_not_tried_when_browser_session_refuses_with_401(tmp_path):
    with respx.mock(assert_all_called=False) as router:
        fake = FakeT3(router, exchange_status=401)
        result = run_probe(tmp_path)
    assert not result.ok
    assert (result.step, result.status, result.kind) == ("exchange", 401, "HTTPStatus")
    assert "POST /api/auth/bootstrap" not in fake.calls
    assert result.fingerprint() == "pairing-probe:exchange:401:HTTPStatus"


def test_authenticated_answer_without_set_cookie_fails_at_the_cookie_step(tmp_path):
    with respx.mock(assert_all_called=False) as router:
        FakeT3(router, set_cookie=False)
        result = run_probe(tmp_path)
    assert (result.ok, result.step, result.kind) == (False, "cookie", "MissingCookie")
    assert "7756" in result.detail


def test_a_cookie_with_another_name_fails_at_the_cookie_step_naming_both(tmp_path):
    with respx.mock(assert_all_called=False) as router:
        FakeT3(router, cookie_name="session")
        result = run_probe(tmp_path)
    assert (result.step, result.kind) == ("cookie", "WrongCookieName")
    assert "session" in result.detail and COOKIE_NAME in result.detail
    assert COOKIE_VALUE not in result.detail


def test_a_cookie_the_server_does_not_accept_back_fails_at_replay(tmp_path):
    with respx.mock(assert_all_called=False) as router:
        FakeT3(router, replay_ok=False)
        result = run_probe(tmp_path)
    assert (result.step, result.status, result.kind) == ("replay", 200, "CookieNotAccepted")


def test_a_credential_that_works_twice_fails_at_one_time(tmp_path):
    with respx.mock(assert_all_called=False) as router:
        FakeT3(router, reusable=True)
        result = run_probe(tmp_path)
    assert (result.step, result.status, result.kind) == ("one-time", 200, "CredentialReusable")


class _ConnectionBoundT3(BaseHTTPRequestHandler):
    """An Era B server over HTTP/1.1 keep-alive whose session is bound to the connection that made
    the exchange, not to the cookie it set: it notes each request's connection (client port)."""

    protocol_version = "HTTP/1.1"
    connections: list[int] = []
    paired: set[int] = set()  # the connections an exchange authenticated
    used: set[str] = set()

    def log_message(self, *_args: object) -> None:
        pass

    def _answer(self, status: int, doc: dict, cookie: str | None = None) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        if cookie:
            self.send_header("set-cookie", f"{COOKIE_NAME}={cookie}; Path=/; HttpOnly")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        self.connections.append(self.client_address[1])
        authed = self.client_address[1] in self.paired  # whatever cookie came, or none
        self._answer(200, {"authenticated": authed, "auth": {"sessionCookieName": COOKIE_NAME}})

    def do_POST(self) -> None:  # noqa: N802
        self.connections.append(self.client_address[1])
        credential = json.loads(self.rfile.read(int(self.headers["content-length"])))["credential"]
        if credential in self.used:
            self._answer(401, {"code": "auth_invalid"})
            return
        self.used.add(credential)
        self.paired.add(self.client_address[1])
        self._answer(200, {"authenticated": True}, cookie=COOKIE_VALUE)


def test_each_step_goes_on_a_connection_of_its_own_so_a_session_bound_to_a_connection_fails_replay(tmp_path):
    _ConnectionBoundT3.connections, _ConnectionBoundT3.paired, _ConnectionBoundT3.used = [], set(), set()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ConnectionBoundT3)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = probe.pairing_probe(f"http://127.0.0.1:{server.server_address[1]}", tmp_path / "base",
                                     minter(tmp_path), timeout=5)
    finally:
        server.shutdown()
        server.server_close()
    assert (result.ok, result.step) == (False, "replay"), result.detail
    seen = _ConnectionBoundT3.connections
    assert len(seen) == 3 and len(set(seen)) == 3, seen  # session, exchange, replay: three connections


def test_a_server_that_is_not_listening_fails_at_the_first_step(tmp_path):
    with respx.mock(assert_all_called=False) as router:
        router.get(f"{URL}/api/auth/session").mock(side_effect=httpx.ConnectError("refused"))
        result = run_probe(tmp_path)
    assert (result.step, result.status, result.kind) == ("session", None, "ConnectError")
    assert result.steps[-1].name == "session" and not result.steps[-1].ok


# ---------------------------------------------------------------- minting


def test_mint_failure_falls_back_to_the_startup_token(tmp_path):
    with respx.mock(assert_all_called=False) as router:
        FakeT3(router)
        result = run_probe(tmp_path, executable=minter(tmp_path, credential=None, exit_code=1),
                           token_fallback=lambda: "STARTUPTOKEN1")
    assert result.ok
    mint = next(s for s in result.steps if s.name == "mint")
    assert "startup token" in mint.detail


def test_mint_failure_without_a_token_fails_at_mint(tmp_path):
    with respx.mock(assert_all_called=False) as router:
        fake = FakeT3(router)
        result = run_probe(tmp_path, executable=tmp_path / "missing-t3", token_fallback=lambda: None)
    assert (result.ok, result.step, result.kind) == (False, "mint", "MintFailed")
    assert not any(call.startswith("POST") for call in fake.calls)


def test_the_mint_command_is_the_contract_argv(tmp_path, monkeypatch):
    seen = []
    from t3track import runner

    def fake_run(argv, **kwargs):  # noqa: ANN001, ANN003
        seen.append([os.fspath(a) for a in argv])
        return runner.Completed([], 0, json.dumps({"credential": CREDENTIAL}), "", 0.1)

    monkeypatch.setattr(runner, "run", fake_run)
    with respx.mock(assert_all_called=False) as router:
        FakeT3(router)
        assert run_probe(tmp_path, executable=Path("/opt/t3/current/t3")).ok
    assert seen == [["/opt/t3/current/t3", "auth", "pairing", "create", "--base-dir", str(tmp_path / "base"),
                     "--ttl", "5m", "--json"]]


# ---------------------------------------------------------------- secrets and scope


def test_a_credential_echoed_in_an_error_body_is_redacted(tmp_path):
    with respx.mock(assert_all_called=False) as router:
        FakeT3(router, exchange_status=403, echo_credential=True)
        result = run_probe(tmp_path)
    assert result.step == "exchange"
    assert "nope for" in result.detail
    assert CREDENTIAL not in json.dumps(to_jsonable(result))


def test_a_non_loopback_url_is_refused_before_connecting(tmp_path):
    with respx.mock() as router:  # any request would fail the test: no route matches
        with pytest.raises(UsageError):
            probe.pairing_probe("http://10.1.2.3:3773", tmp_path, minter(tmp_path), timeout=5)
        with pytest.raises(UsageError):
            probe.front_door_check("http://example.com", timeout=5)
        assert not router.calls


def test_front_door_passes_on_302_with_a_session_cookie():
    with respx.mock() as router:
        router.get(f"{URL}/").mock(return_value=httpx.Response(
            302, headers=[("location", "/"), ("set-cookie", f"t3_session={COOKIE_VALUE}; Path=/")]))
        result = probe.front_door_check(f"{URL}/", timeout=5)
    assert result.ok and result.cookie_name == "t3_session"
    assert COOKIE_VALUE not in json.dumps(to_jsonable(result))


def test_front_door_answering_200_fails():
    with respx.mock() as router:
        router.get(f"{URL}/").mock(return_value=httpx.Response(200, text="<html>app</html>"))
        result = probe.front_door_check(f"{URL}/", timeout=5)
    assert (result.ok, result.step, result.status) == (False, "front-door", 200)


# ---------------------------------------------------------------- the command


def test_probe_command_refuses_a_remote_url_with_exit_2(tmp_path):
    result = CliRunner().invoke(app, ["probe", "--url", "http://192.0.2.1:3773", "--base-dir", str(tmp_path),
                                      "--executable", str(minter(tmp_path))])
    assert result.exit_code == 2
    assert "loopback" in result.output


def test_probe_command_fails_with_exit_1_naming_the_step_and_status(tmp_path):
    with respx.mock(assert_all_called=False) as router:
        FakeT3(router, set_cookie=False)
        result = CliRunner().invoke(app, ["probe", "--url", URL, "--base-dir", str(tmp_path),
                                          "--executable", str(minter(tmp_path))])
    assert result.exit_code == 1
    assert "cookie" in result.output and "200" in result.output
    assert CREDENTIAL not in result.output


@pytest.mark.real_server
def test_probe_command_passes_against_a_real_server(real_t3, secret_spy, tmp_path):  # noqa: F811
    with serving(real_t3, tmp_path / "base") as url:
        result = CliRunner().invoke(app, ["probe", "--json", "--url", url, "--base-dir", str(tmp_path / "base"),
                                          "--executable", str(real_t3)])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["ok"] is True and doc["step"] == "done"
    assert doc["exchange_path"] == "/api/auth/browser-session"
    assert doc["cookie_name"].startswith("t3_session_")
    assert [s["status"] for s in doc["steps"] if s["name"] == "one-time"] == [401]
    assert len(secret_spy.values) >= 2  # the credential and the cookie value were seen ...
    assert not [v for v in secret_spy.values if v in result.output]  # ... and never printed


# ---------------------------------------------------------------- the emulators: both eras, every broken build


@pytest.fixture
def emulator(tmp_path):
    """Start an emulator install (era, fault) on a fresh base dir; every server is stopped afterwards."""
    from tests.emulator.package import make_install, start_server

    handles = []

    def start(version="0.0.42", era="B", fault=None):  # noqa: ANN001, ANN202
        prefix = tmp_path / f"install-{len(handles)}"
        executable = make_install(prefix, version, era=era, fault=fault)
        handle = start_server(executable, tmp_path / f"base-{len(handles)}")
        handles.append(handle)
        return handle, executable

    yield start
    for handle in handles:
        handle.stop()


def test_era_b_emulator_passes_through_browser_session(emulator, secret_spy):  # noqa: F811
    server, executable = emulator()
    result = probe.pairing_probe(server.url, server.base_dir, executable, timeout=5)
    assert result.ok, result.detail
    assert result.exchange_path == "/api/auth/browser-session"
    assert result.cookie_name.startswith(f"t3_session_{server.port}_")
    assert secret_spy.values and not [v for v in secret_spy.values if v in json.dumps(to_jsonable(result))]


def test_era_a_emulator_passes_through_bootstrap_with_the_plain_cookie_name(emulator):
    server, executable = emulator(version="0.0.24", era="A")
    result = probe.pairing_probe(server.url, server.base_dir, executable, timeout=5)
    assert result.ok, result.detail
    assert (result.exchange_path, result.cookie_name) == ("/api/auth/bootstrap", "t3_session")


@pytest.mark.parametrize(("fault", "step", "status", "kind"), [
    ("no-cookie", "cookie", 200, "MissingCookie"),
    ("wrong-cookie-name", "cookie", 200, "WrongCookieName"),
    ("renamed-endpoint", "exchange", 404, "HTTPStatus"),
    ("exchange-500", "exchange", 500, "HTTPStatus"),
    ("cookie-not-accepted", "replay", 200, "CookieNotAccepted"),
    ("reusable-credential", "one-time", 200, "CredentialReusable"),
    ("mint-fails", "mint", None, "MintFailed"),
])
def test_a_broken_emulator_fails_at_the_step_it_breaks(emulator, secret_spy, fault, step, status, kind):  # noqa: F811
    server, executable = emulator(fault=fault)
    result = probe.pairing_probe(server.url, server.base_dir, executable, timeout=5)
    assert (result.ok, result.step, result.status, result.kind) == (False, step, status, kind), result.detail
    assert not [v for v in secret_spy.values if v in json.dumps(to_jsonable(result))]


def test_a_build_whose_mint_fails_still_pairs_with_its_startup_token(emulator):
    server, executable = emulator(fault="mint-fails")
    result = probe.pairing_probe(server.url, server.base_dir, executable, timeout=5, token_fallback=server.token)
    assert result.ok, result.detail
    assert "startup token" in next(s.detail for s in result.steps if s.name == "mint")


def test_probe_command_against_a_broken_emulator_names_the_step_without_leaking(emulator, secret_spy):  # noqa: F811
    server, executable = emulator(fault="reusable-credential")
    result = CliRunner().invoke(app, ["probe", "--url", server.url, "--base-dir", str(server.base_dir),
                                      "--executable", str(executable)])
    assert result.exit_code == 1
    assert "failed at step one-time (HTTP 200)" in result.output
    assert secret_spy.values and not [v for v in secret_spy.values if v in result.output]


def test_probe_command_mints_with_the_current_install_by_default(emulator, tmp_path):
    from tests.emulator.package import EXECUTABLE

    server, executable = emulator()
    prefix = executable.parents[len(Path(EXECUTABLE).parts) - 1]
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "current").symlink_to(prefix)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(f"root: {tmp_path / 'root'}\nexecutable: {EXECUTABLE}\ngates:\n  probe_timeout: 5s\n")
    result = CliRunner().invoke(app, ["--config", str(config_file), "probe", "--url", server.url,
                                      "--base-dir", str(server.base_dir)])
    assert result.exit_code == 0, result.output
    assert "pairing probe passed" in result.output
    assert "ok   mint" in result.output


@pytest.mark.skipif(os.geteuid() != 0, reason="only root mints as someone else")
def test_root_mints_as_the_owner_of_the_base_dir(tmp_path):
    base = tmp_path / "alice-base"
    base.mkdir()
    os.chown(base, 65534, 65534)
    import pwd

    assert probe.base_dir_owner(base) == pwd.getpwuid(65534).pw_name
    assert probe.base_dir_owner(tmp_path) is None  # root's own dir: mint as ourselves
