"""The pairing handshake of t3code-contract.md, against any running T3 Code server on loopback.

One code path serves the `pairing-probe` gate (against a sandbox), `t3track probe` and the live
check after a swap. A build that answers `GET /` with 200 but cannot pair (2026-06-09) or that says
`authenticated: true` without a cookie (upstream issue 7756) must fail here, naming the step.

Steps, in order (each a `ProbeStep` in the result):
  session   cookieless GET /api/auth/session: 200, not authenticated; the cookie name is read from
            auth.sessionCookieName (Era B: port and state path are part of it), `t3_session` if absent
  mint      `<executable> auth pairing create --base-dir D --ttl 5m --json` through the runner;
            on failure the caller's token_fallback (the startup `Token:` line)
  exchange  POST /api/auth/browser-session {"credential"}; on 404 only, POST /api/auth/bootstrap
            (Era A); 200 (or 302 from a front door), `authenticated: true` when the body is JSON
  cookie    a Set-Cookie with the expected name and a non-empty value
  replay    GET /api/auth/session with that cookie: authenticated: true
  one-time  the same credential posted again must be refused with a 4xx

The exchange's answer must also carry `cache-control: no-store` and `pragma: no-cache`, as every
credential response of upstream does: the 7756 build lost them together with the cookie. Their absence
on an exchange that otherwise passes is a warning in the result (a second signal of that class,
inconclusive on its own); on one without a cookie it is said beside the missing cookie, which fails.

Credentials and cookie values never leave this module unredacted: every detail goes through
t3track.redact with the values seen so far.
"""

from __future__ import annotations

import functools
import json
import os
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from t3track import runner
from t3track.errors import T3TrackError
from t3track.host.serving import require_loopback
from t3track.redact import redact

Confine = Callable[[list[str | Path]], list[str]]  # a sandbox's argv wrapper: its mint runs confined

SESSION_PATH = "/api/auth/session"
BROWSER_SESSION_PATH = "/api/auth/browser-session"  # Era B (0.0.25 and later)
BOOTSTRAP_PATH = "/api/auth/bootstrap"              # Era A (0.0.24)
DEFAULT_COOKIE_NAME = "t3_session"
MINT_TTL = "5m"
# `auth pairing create` is a whole second start of T3 (~1.3 s of CPU for the real 0.0.42, migrations
# checked, then the credential written): on a busy host it takes far longer than one HTTP request, and a
# mint that times out would fail a good candidate's gate or its live check. It gets at least this long.
MINT_TIMEOUT_MIN_S = 30.0
DEFAULT_TIMEOUT_S = 10.0
BODY_LIMIT = 300

STEP_SESSION = "session"
STEP_MINT = "mint"
STEP_EXCHANGE = "exchange"
STEP_COOKIE = "cookie"
STEP_REPLAY = "replay"
STEP_ONE_TIME = "one-time"
STEP_FRONT_DOOR = "front-door"
STEP_DONE = "done"


@dataclass
class ProbeStep:
    name: str
    ok: bool
    status: int | None
    detail: str
    duration_s: float


@dataclass
class ProbeResult:
    ok: bool
    step: str                 # the failing step, or 'done'
    status: int | None        # HTTP status of the failing step (None: no answer, or not HTTP)
    detail: str               # redacted
    cookie_name: str | None
    exchange_path: str | None
    steps: list[ProbeStep] = field(default_factory=list)
    duration_s: float = 0.0
    kind: str | None = None   # failure class, e.g. HTTPStatus, MissingCookie, CredentialReusable
    warnings: list[str] = field(default_factory=list)  # signals that do not fail it, e.g. no `no-store`

    def fingerprint(self, gate: str = "pairing-probe") -> str | None:
        """A stable label of how it failed, e.g. `pairing-probe:exchange:404:HTTPStatus`."""
        if self.ok:
            return None
        return f"{gate}:{self.step}:{self.status if self.status is not None else '-'}:{self.kind or 'Failed'}"


class SessionCookie:
    """A session cookie obtained by a handshake (for the sessions-survive check). Never printed."""

    def __init__(self, name: str, value: str):
        self.name = name
        self.value = value

    def __repr__(self) -> str:
        return f"SessionCookie(name={self.name!r}, value=[REDACTED])"


@dataclass(repr=False)
class Handshake:
    """The result plus what only the caller may use: the cookie and the secrets to redact with."""

    result: ProbeResult
    cookie: SessionCookie | None
    secrets: set[str]

    def __repr__(self) -> str:
        return f"Handshake(result={self.result!r}, cookie={self.cookie!r}, secrets=[{len(self.secrets)} redacted])"


class _StepFailed(Exception):
    def __init__(self, step: str, status: int | None, detail: str, kind: str):
        super().__init__(detail)
        self.step, self.status, self.detail, self.kind = step, status, detail, kind


# ---------------------------------------------------------------- URL and HTTP plumbing


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """httpx's default verification (certifi's CA bundle), built once: loading the bundle costs
    ~45 ms, and every handshake makes a client."""
    import certifi

    return ssl.create_default_context(cafile=certifi.where())


def _client(timeout: float) -> httpx.Client:
    """Every request on a connection of its own. The handshake's replay then shows that the cookie
    alone authenticates, not a connection the exchange left behind. And a server that writes a
    response's headers and body as two segments without TCP_NODELAY (Python's http.server, the
    emulator) answers a request on a reused connection only after the client's delayed ACK: ~40 ms
    for each of the replay and the one-time steps, per user, in the pairing gate and in the live
    check. A loopback connect costs well under a millisecond."""
    # trust_env=False: a proxy from the environment must never see a credential or a cookie.
    return httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False, verify=_tls_context(),
                        limits=httpx.Limits(max_keepalive_connections=0))


def _join(url: str, path: str) -> str:
    return url.rstrip("/") + path


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError):
        return None


def _set_cookies(response: httpx.Response) -> list[tuple[str, str]]:
    """(name, value) of every Set-Cookie header, attributes dropped."""
    cookies = []
    for header in response.headers.get_list("set-cookie"):
        pair = header.split(";", 1)[0]
        if "=" in pair:
            name, value = pair.split("=", 1)
            cookies.append((name.strip(), value.strip().strip('"')))
    return cookies


class _Session:
    """Requests of one probe: cookieless unless a cookie is passed, every secret remembered."""

    def __init__(self, url: str, timeout: float):
        self.url = url
        self.timeout = timeout
        self.client = _client(timeout)
        self.secrets: set[str] = set()
        self.steps: list[ProbeStep] = []

    def close(self) -> None:
        self.client.close()

    def clean(self, text: str) -> str:
        return redact(text, self.secrets)

    def body(self, response: httpx.Response) -> str:
        text = response.text.strip().replace("\n", " ")
        if len(text) > BODY_LIMIT:
            text = text[:BODY_LIMIT] + "…"
        return self.clean(text) or "(empty body)"

    def request(self, step: str, method: str, path: str, *, cookie: tuple[str, str] | None = None,
                json_body: Any = None) -> httpx.Response:
        self.client.cookies.clear()  # the jar must never add a cookie we did not mean to send
        headers = {"accept": "application/json"}
        if cookie is not None:
            headers["cookie"] = f"{cookie[0]}={cookie[1]}"
        try:
            response = self.client.request(method, _join(self.url, path), headers=headers, json=json_body)
        except httpx.TimeoutException:
            raise _StepFailed(step, None, f"{method} {path} got no answer within {self.timeout:.0f}s",
                              "Timeout") from None
        except httpx.HTTPError as exc:
            raise _StepFailed(step, None, f"{method} {path} failed: {self.clean(type(exc).__name__ + ': ' + str(exc))}",
                              "ConnectError") from None
        self.client.cookies.clear()
        for _, value in _set_cookies(response):
            self.secrets.add(value)  # whatever the server hands out is a secret from now on
        return response

    def record(self, name: str, ok: bool, status: int | None, detail: str, started: float) -> None:
        self.steps.append(ProbeStep(name, ok, status, self.clean(detail), round(time.monotonic() - started, 3)))

    def failed(self, failed: _StepFailed, started: float, cookie_name: str | None = None,
               exchange_path: str | None = None) -> ProbeResult:
        if not self.steps or self.steps[-1].name != failed.step:  # no answer at all: not recorded yet
            self.steps.append(ProbeStep(failed.step, False, failed.status, self.clean(failed.detail), 0.0))
        return ProbeResult(False, failed.step, failed.status, self.clean(failed.detail), cookie_name,
                           exchange_path, self.steps, round(time.monotonic() - started, 3), failed.kind)


# ---------------------------------------------------------------- the handshake


def _default_env(run_as: str | None) -> dict[str, str]:
    home = os.environ.get("HOME", "/")
    if run_as is not None:
        import pwd

        try:
            home = pwd.getpwnam(run_as).pw_dir
        except KeyError:
            pass
    return runner.scrubbed_env(Path(home))


UNTRUSTED_MINTER = "nobody"


def base_dir_owner(base_dir: Path) -> str | None:
    """Who should mint into `base_dir` when root runs the probe: its owner, so that nothing the mint
    creates there ends up owned by root (the user's server could not write it). None: as ourselves."""
    if os.geteuid() != 0:
        return None
    import pwd

    from t3track.host.usertree import UserTreeFault, open_dir

    try:
        fd = open_dir(base_dir, user=base_dir.name)  # never the owner of what a link names
    except UserTreeFault:
        return UNTRUSTED_MINTER  # a linked base dir: mint with no rights at all, so the probe fails safe
    try:
        uid = os.fstat(fd).st_uid
    finally:
        os.close(fd)
    try:
        return None if uid == 0 else pwd.getpwuid(uid).pw_name
    except KeyError:
        return UNTRUSTED_MINTER


def _credential_from(stdout: str) -> str | None:
    text = stdout.strip()
    candidates = [text]
    if "{" in text and "}" in text:  # tolerate log lines around the JSON document
        candidates.append(text[text.index("{"): text.rindex("}") + 1])
    for candidate in candidates:
        try:
            doc = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(doc, dict) and isinstance(doc.get("credential"), str) and doc["credential"]:
            return doc["credential"]
    return None


def _minted(done: runner.Completed | T3TrackError) -> tuple[str | None, str]:
    """The credential a finished `auth pairing create` printed, or None and why not."""
    if isinstance(done, T3TrackError):
        return None, done.message
    credential = _credential_from(done.stdout) if done.ok else None
    if credential:
        return credential, ""
    # The raw output may hold a credential in a shape we did not parse: it is never shown.
    return None, done.describe() if not done.ok else "`auth pairing create` printed no credential"


def _run_mint(executable: Path, base_dir: Path, timeout: float, run_as: str | None,
              env: Mapping[str, str] | None, confine: Confine | None = None) -> runner.Completed | T3TrackError:
    argv: list[str | Path] = [executable, "auth", "pairing", "create", "--base-dir", base_dir, "--ttl", MINT_TTL,
                              "--json"]
    try:  # a sandbox's mint runs in its confinement (t3track.host.confine)
        return runner.run(confine(argv) if confine is not None else argv,
                          timeout=max(timeout, MINT_TIMEOUT_MIN_S), env=env if env is not None else _default_env(run_as),
                          run_as=run_as)
    except T3TrackError as exc:
        return exc


def _mint(s: _Session, base_dir: Path, executable: Path, *, run_as: str | None, env: Mapping[str, str] | None,
          token_fallback: Callable[[], str | None] | None, confine: Confine | None = None) -> str:
    """`auth pairing create` against a server that is ready: its migrations are done, so the mint
    (which migrates too) never meets another migrator on the database."""
    started = time.monotonic()
    credential, why = _minted(_run_mint(executable, base_dir, s.timeout, run_as, env, confine))
    if credential:
        s.secrets.add(credential)
        s.record(STEP_MINT, True, None, "minted with `auth pairing create`", started)
        return credential
    token = token_fallback() if token_fallback is not None else None
    if token:
        s.secrets.add(token)
        s.record(STEP_MINT, True, None, f"`auth pairing create` failed ({s.clean(why)}); used the startup token", started)
        return token
    detail = f"could not mint a pairing credential: {s.clean(why)}" + (
        "; no startup token to fall back on" if token_fallback is not None else "")
    s.record(STEP_MINT, False, None, detail, started)
    raise _StepFailed(STEP_MINT, None, detail, "MintFailed")


def _check_session(s: _Session) -> str:
    started = time.monotonic()
    response = s.request(STEP_SESSION, "GET", SESSION_PATH)
    doc = _json_or_none(response)
    if response.status_code != 200 or not isinstance(doc, dict):
        detail = f"cookieless GET {SESSION_PATH} answered {response.status_code}: {s.body(response)}"
        s.record(STEP_SESSION, False, response.status_code, detail, started)
        raise _StepFailed(STEP_SESSION, response.status_code, detail,
                          "HTTPStatus" if response.status_code != 200 else "NotJSON")
    if doc.get("authenticated") is True:
        detail = f"cookieless GET {SESSION_PATH} says authenticated: true (a server that trusts everyone)"
        s.record(STEP_SESSION, False, 200, detail, started)
        raise _StepFailed(STEP_SESSION, 200, detail, "AuthenticatedWithoutCookie")
    auth = doc.get("auth")
    name = auth.get("sessionCookieName") if isinstance(auth, dict) else None
    cookie_name = name if isinstance(name, str) and name else DEFAULT_COOKIE_NAME
    s.record(STEP_SESSION, True, 200, f"not authenticated; session cookie {cookie_name}", started)
    return cookie_name


def missing_cache_headers(response: httpx.Response) -> list[str]:
    """The credential-response headers upstream always sends that this answer lacks."""
    missing = []
    if "no-store" not in response.headers.get("cache-control", "").lower():
        missing.append("cache-control: no-store")
    if "no-cache" not in response.headers.get("pragma", "").lower():
        missing.append("pragma: no-cache")
    return missing


def _cache_warning(path: str, response: httpx.Response) -> str | None:
    missing = missing_cache_headers(response)
    if not missing:
        return None
    return (f"POST {path} answered without {' and '.join(missing)} (upstream sends both on every credential "
            "response; the 7756 build lost them with the cookie)")


def _exchange(s: _Session, credential: str) -> tuple[str, httpx.Response]:
    started = time.monotonic()
    path = BROWSER_SESSION_PATH
    response = s.request(STEP_EXCHANGE, "POST", path, json_body={"credential": credential})
    if response.status_code == 404:  # Era A: only a missing route sends us to the old path
        path = BOOTSTRAP_PATH
        response = s.request(STEP_EXCHANGE, "POST", path, json_body={"credential": credential})
    status = response.status_code
    if status not in (200, 302):
        detail = f"POST {path} answered {status}: {s.body(response)}"
        s.record(STEP_EXCHANGE, False, status, detail, started)
        raise _StepFailed(STEP_EXCHANGE, status, detail, "HTTPStatus")
    doc = _json_or_none(response)
    if status == 200 and doc is not None and not (isinstance(doc, dict) and doc.get("authenticated") is True):
        detail = f"POST {path} answered 200 without authenticated: true: {s.body(response)}"
        s.record(STEP_EXCHANGE, False, status, detail, started)
        raise _StepFailed(STEP_EXCHANGE, status, detail, "NotAuthenticated")
    s.record(STEP_EXCHANGE, True, status, f"POST {path} answered {status}", started)
    return path, response


def _cookie(s: _Session, response: httpx.Response, expected: str, path: str) -> SessionCookie:
    started = time.monotonic()
    cookies = _set_cookies(response)
    for name, value in cookies:
        if name == expected and value:
            s.record(STEP_COOKIE, True, response.status_code, f"Set-Cookie {name}", started)
            return SessionCookie(name, value)
    if not cookies:
        missing = missing_cache_headers(response)
        detail = (f"POST {path} answered {response.status_code} without a Set-Cookie"
                  + (f" and without {' and '.join(missing)}" if missing else "")
                  + " (a false pass like upstream issue 7756)")
        kind = "MissingCookie"
    else:
        names = ", ".join(sorted({n or '(no name)' for n, _ in cookies}))
        detail = f"POST {path} set cookie(s) {names}, not {expected}" + (
            " (empty value)" if expected in names.split(", ") else "")
        kind = "WrongCookieName"
    s.record(STEP_COOKIE, False, response.status_code, detail, started)
    raise _StepFailed(STEP_COOKIE, response.status_code, detail, kind)


def _replay(s: _Session, cookie: SessionCookie) -> None:
    started = time.monotonic()
    response = s.request(STEP_REPLAY, "GET", SESSION_PATH, cookie=(cookie.name, cookie.value))
    doc = _json_or_none(response)
    if response.status_code != 200 or not (isinstance(doc, dict) and doc.get("authenticated") is True):
        detail = f"GET {SESSION_PATH} with the new cookie answered {response.status_code}: {s.body(response)}"
        s.record(STEP_REPLAY, False, response.status_code, detail, started)
        raise _StepFailed(STEP_REPLAY, response.status_code, detail,
                          "HTTPStatus" if response.status_code != 200 else "CookieNotAccepted")
    s.record(STEP_REPLAY, True, 200, "the cookie authenticates", started)


def _one_time(s: _Session, path: str, credential: str) -> None:
    started = time.monotonic()
    response = s.request(STEP_ONE_TIME, "POST", path, json_body={"credential": credential})
    status = response.status_code
    if not 400 <= status < 500:
        detail = f"the used credential posted again to {path} answered {status}, not a 4xx: {s.body(response)}"
        s.record(STEP_ONE_TIME, False, status, detail, started)
        raise _StepFailed(STEP_ONE_TIME, status, detail,
                          "CredentialReusable" if status < 400 else "HTTPStatus")
    s.record(STEP_ONE_TIME, True, status, f"the used credential is refused ({status})", started)


def pairing_handshake(
    url: str,
    base_dir: Path,
    executable: Path,
    *,
    timeout: float,
    run_as: str | None = None,
    env: Mapping[str, str] | None = None,
    token_fallback: Callable[[], str | None] | None = None,
    confine: Confine | None = None,
) -> Handshake:
    """The whole handshake; also hands back the session cookie (for sessions-survive) and the
    secrets seen, so the caller can redact its own logs with them. `confine`: a sandbox's wrapper
    of the mint's argv (t3track.host.sandbox.SandboxServer.confine)."""
    require_loopback(url)
    started = time.monotonic()
    s = _Session(url, timeout)
    cookie_name: str | None = None
    path: str | None = None
    cookie: SessionCookie | None = None
    try:
        cookie_name = _check_session(s)
        credential = _mint(s, base_dir, executable, run_as=run_as, env=env, token_fallback=token_fallback,
                           confine=confine)
        path, response = _exchange(s, credential)
        cookie = _cookie(s, response, cookie_name, path)
        _replay(s, cookie)
        _one_time(s, path, credential)
    except _StepFailed as failed:
        return Handshake(s.failed(failed, started, cookie_name, path), None, set(s.secrets))
    finally:
        s.close()
    warning = _cache_warning(path, response)
    detail = f"paired through {path}; cookie {cookie_name} replayed; credential one-time"
    result = ProbeResult(True, STEP_DONE, None, detail + (f"; but {warning}" if warning else ""), cookie_name, path,
                         s.steps, round(time.monotonic() - started, 3), warnings=[warning] if warning else [])
    return Handshake(result, cookie, set(s.secrets))


def pairing_probe(
    url: str,
    base_dir: Path,
    executable: Path,
    *,
    timeout: float,
    run_as: str | None = None,
    env: Mapping[str, str] | None = None,
    token_fallback: Callable[[], str | None] | None = None,
) -> ProbeResult:
    """Pass only when a freshly minted credential becomes a working, correctly named cookie once."""
    return pairing_handshake(url, base_dir, executable, timeout=timeout, run_as=run_as, env=env,
                             token_fallback=token_fallback).result


def session_still_valid(url: str, cookie: SessionCookie, *, timeout: float) -> ProbeResult:
    """Does a session cookie from earlier (another version, maybe another port) still authenticate?

    The value is replayed under the cookie name this server announces now: Era B names carry the
    port, which differs between two sandbox starts.
    """
    require_loopback(url)
    started = time.monotonic()
    s = _Session(url, timeout)
    s.secrets.add(cookie.value)
    name: str | None = None
    try:
        name = _check_session(s)
        _replay(s, SessionCookie(name, cookie.value))
    except _StepFailed as failed:
        return s.failed(failed, started, name)
    finally:
        s.close()
    return ProbeResult(True, STEP_DONE, None, "the earlier session still authenticates", name, None, s.steps,
                       round(time.monotonic() - started, 3))


def front_door_check(url: str, timeout: float) -> ProbeResult:
    """The operator's front door answers a cookieless request with 302 and a t3_session… cookie
    when auto-pairing works (T3 itself never answers 302)."""
    require_loopback(url)
    started = time.monotonic()
    s = _Session(url, timeout)
    cookie_name: str | None = None
    try:
        s.client.cookies.clear()
        try:
            response = s.client.get(url)
        except httpx.TimeoutException:
            raise _StepFailed(STEP_FRONT_DOOR, None, f"GET {url} got no answer within {timeout:.0f}s", "Timeout") from None
        except httpx.HTTPError as exc:
            raise _StepFailed(STEP_FRONT_DOOR, None, f"GET {url} failed: {type(exc).__name__}", "ConnectError") from None
        cookies = _set_cookies(response)
        s.secrets.update(v for _, v in cookies)
        names = [n for n, v in cookies if n.startswith(DEFAULT_COOKIE_NAME) and v]
        if response.status_code != 302:
            raise _StepFailed(STEP_FRONT_DOOR, response.status_code,
                              f"cookieless GET {url} answered {response.status_code}, not 302: {s.body(response)}",
                              "HTTPStatus")
        if not names:
            raise _StepFailed(STEP_FRONT_DOOR, 302, f"cookieless GET {url} answered 302 without a "
                              f"{DEFAULT_COOKIE_NAME}… cookie", "MissingCookie")
        cookie_name = names[0]
        s.record(STEP_FRONT_DOOR, True, 302, f"302 with cookie {cookie_name}", started)
    except _StepFailed as failed:
        return s.failed(failed, started)
    finally:
        s.close()
    return ProbeResult(True, STEP_DONE, None, f"front door answers 302 with {cookie_name}", cookie_name, None,
                       s.steps, round(time.monotonic() - started, 3))
