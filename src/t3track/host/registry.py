"""The npm registry, read over httpx: dist-tags (cheap), packuments (conditional, cached) and tarballs.

Works with registries that send no ETag, no `time` and no `dist.signatures`. Every failure is an
EnvironmentFault (exit 3) naming the URL and what went wrong; 5xx answers and connection errors are
retried a bounded number of times with backoff. The auth token never appears in an error or a file
written here.

A registry (or whatever answers in its place) is not trusted with our memory or our night: every
request has an overall deadline, retries included (a server dripping a byte every few seconds is cut
off), and every kind of document a size cap counted on the decoded bytes, decompressed here in bounded
steps (a gzip bomb stops at the cap, it never expands in memory). See `Limits`.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from t3track import runner
from t3track.config import Config
from t3track.errors import EnvironmentFault
from t3track.fsutil import atomic_write_text, ensure_private_dir
from t3track.redact import redact

TOKEN_ENV_VARS = ("T3TRACK_NPM_TOKEN", "NPM_TOKEN")
NPM_CONFIG_TIMEOUT_S = 30.0
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Limits:
    """Caps per kind of document (decoded bytes) and the deadline of one request, retries included."""

    dist_tags: int = 64 << 10
    packument: int = 32 << 20
    tarball: int = 512 << 20
    deadline_s: float = 120.0


ERROR_BODY_CAP = 4096  # of an error answer, only what a message quotes is read


@dataclass(frozen=True)
class Answer:
    """A registry answer, read within its deadline and cap."""

    status_code: int
    headers: httpx.Headers
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


class _TooLarge(Exception):
    pass


class _Late(Exception):
    pass


def _decoder(encoding: str) -> Any:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj()
    raise ValueError(encoding)


def _read_capped(response: httpx.Response, cap: int, deadline: float) -> bytes:
    """The decoded body, at most `cap` bytes, done by `deadline` (monotonic), else _TooLarge/_Late."""
    length = response.headers.get("content-length")
    if length is not None and length.isdigit() and response.headers.get("content-encoding") is None \
            and int(length) > cap:
        raise _TooLarge(f"announces {int(length)} bytes")
    decoder = _decoder(response.headers.get("content-encoding", ""))
    parts: list[bytes] = []
    total = 0

    def keep(data: bytes) -> None:
        nonlocal total
        total += len(data)
        if total > cap:
            raise _TooLarge(f"sent more than {cap} bytes")
        parts.append(data)

    for raw in response.iter_raw():
        if time.monotonic() > deadline:
            raise _Late()
        if decoder is None:
            keep(raw)
            continue
        pending = raw
        while pending:
            keep(decoder.decompress(pending, cap - total + 1))  # never more than the cap allows
            pending = decoder.unconsumed_tail
    if time.monotonic() > deadline:
        raise _Late()
    if decoder is not None:
        keep(decoder.flush())  # every input byte went through the bounded loop: little is left
    return b"".join(parts)


@dataclass(frozen=True)
class VersionInfo:
    version: str
    tarball: str
    integrity: str | None  # SRI string from dist.integrity (sha512-…); None when the registry gives none


@dataclass(frozen=True)
class Packument:
    name: str
    dist_tags: dict[str, str]
    versions: dict[str, VersionInfo]
    time: dict[str, datetime]  # version -> publish time; empty when the registry sends none
    etag: str | None = None


def registry_token(env: Mapping[str, str] | None = None) -> str | None:
    """The auth token for a private registry, from T3TRACK_NPM_TOKEN, else NPM_TOKEN."""
    env = os.environ if env is None else env
    for var in TOKEN_ENV_VARS:
        if env.get(var):
            return env[var]
    return None


def resolve_registry_url(config: Config) -> str:
    """config.registry, else what `npm config get registry` says; always ends with '/'."""
    if config.registry:
        return config.registry
    done = runner.run(["npm", "config", "get", "registry"], timeout=NPM_CONFIG_TIMEOUT_S)
    url = done.stdout.strip()
    if not done.ok or not url.startswith(("http://", "https://")):
        raise EnvironmentFault(
            f"cannot tell which registry to use: `npm config get registry` {done.describe()}",
            hint="set `registry:` in the config to your npm registry's URL (http:// or https://)",
        )
    return url if url.endswith("/") else url + "/"


def package_path(package: str) -> str:
    """The URL path segment of a package: `@scope/name` becomes `@scope%2fname`."""
    return quote(package, safe="@")


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class RegistryClient:
    """One registry, one package cache directory. `sleep` is injectable so tests never wait."""

    def __init__(
        self,
        base_url: str,
        cache_dir: Path,
        token: str | None = None,
        timeout: float = 15.0,
        retries: int = 3,
        transport: httpx.BaseTransport | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        backoff_s: float = 0.5,
        limits: Limits | None = None,
    ):
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.cache_dir = cache_dir
        self.retries = retries
        self._token = token
        self._sleep = sleep
        self._backoff_s = backoff_s
        self.limits = limits or Limits()
        self._timeout = timeout
        self._memo: dict[str, Packument] = {}
        self.request_log: list[str] = []  # "GET url -> status", for dry-run and tests
        self._http = httpx.Client(timeout=httpx.Timeout(timeout), transport=transport,
                                  follow_redirects=True, headers={"User-Agent": "t3track"})

    @classmethod
    def for_config(cls, config: Config, **kwargs: Any) -> RegistryClient:
        """The client night.py wants: URL from config or npm, token from the environment."""
        kwargs.setdefault("token", registry_token())
        kwargs.setdefault("limits", Limits(dist_tags=config.registry_limits.dist_tags,
                                           packument=config.registry_limits.packument,
                                           tarball=config.registry_limits.tarball,
                                           deadline_s=config.registry_limits.deadline.total_seconds()))
        return cls(resolve_registry_url(config), config.state_dir / "registry-cache", **kwargs)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- public API ---------------------------------------------------------------------------

    def dist_tags(self, package: str) -> dict[str, str]:
        url = f"{self.base_url}-/package/{package_path(package)}/dist-tags"
        response = self._get(url, accept="application/json", cap=self.limits.dist_tags)
        self._raise_for_status(response, url, package)
        data = self._json(response, url)
        if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise EnvironmentFault(f"registry answer from {url} is not a dist-tags map: {_snippet(response)}",
                                   hint="check that `registry:` points at an npm registry")
        return data

    def packument(self, package: str) -> Packument:
        """The full packument (it holds `time`), revalidated with If-None-Match when cached."""
        if package in self._memo:
            return self._memo[package]
        url = f"{self.base_url}{package_path(package)}"
        cached = self._read_cache(package)
        headers = {"If-None-Match": cached.etag} if cached is not None and cached.etag else {}
        response = self._get(url, accept="application/json", extra=headers, cap=self.limits.packument)
        if response.status_code == 304 and cached is not None:
            self._memo[package] = cached
            return cached
        if response.status_code == 304:  # a 304 to a request we did not make conditional
            response = self._get(url, accept="application/json", cap=self.limits.packument)
        self._raise_for_status(response, url, package)
        packument = _parse_packument(package, self._json(response, url), url, response.headers.get("etag"))
        self._write_cache(package, packument)
        self._memo[package] = packument
        return packument

    def cached_packument(self, package: str) -> Packument | None:
        """The packument from the last fetch, without any request (None when there is none)."""
        return self._memo.get(package) or self._read_cache(package)

    def tarball(self, url: str) -> bytes:
        response = self._get(url, accept="application/octet-stream", cap=self.limits.tarball)
        self._raise_for_status(response, url, None)
        return response.content

    # --- HTTP ---------------------------------------------------------------------------------

    def _headers(self, url: str, accept: str, extra: Mapping[str, str] | None) -> dict[str, str]:
        headers = {"Accept": accept, "Accept-Encoding": "gzip"}
        # Only the configured registry gets the token: tarball URLs may point at another host.
        if self._token and urlsplit(url).netloc == urlsplit(self.base_url).netloc:
            headers["Authorization"] = f"Bearer {self._token}"
        headers.update(extra or {})
        return headers

    def _get(self, url: str, *, accept: str, cap: int, extra: Mapping[str, str] | None = None) -> Answer:
        headers = self._headers(url, accept, extra)
        attempts = self.retries + 1
        deadline = time.monotonic() + self.limits.deadline_s
        late = f"registry {url} did not answer within {self.limits.deadline_s:g}s (the request's deadline)"
        for attempt in range(1, attempts + 1):
            left = deadline - time.monotonic()
            if left <= 0:
                raise EnvironmentFault(late, hint="the registry is too slow; t3track changed nothing, the next run tries again")
            try:
                response = self._fetch(url, headers, cap, deadline, min(self._timeout, left))
            except _Late:
                raise EnvironmentFault(late, hint="the registry (or a proxy) sends too slowly; nothing was "
                                       "changed; raise registry_limits.deadline if it is only slow") from None
            except _TooLarge as exc:
                raise EnvironmentFault(f"registry {url} {exc}: over the cap for this kind of document ({cap} bytes)",
                                       hint="check `registry:`; raise registry_limits in the config only if the "
                                       "registry is right and the package is that large") from None
            except ValueError as exc:
                raise EnvironmentFault(f"registry {url} sent Content-Encoding {str(exc)!r}, which t3track does not "
                                       "decode", hint="check `registry:` and any proxy in between") from None
            except zlib.error as exc:
                raise EnvironmentFault(f"registry {url} sent a body that does not decompress ({exc})",
                                       hint="a proxy or captive portal may be answering; check `registry:`") from None
            except httpx.TimeoutException as exc:
                problem = f"timed out ({exc.__class__.__name__})"
            except httpx.TransportError as exc:
                problem = f"connection failed ({exc.__class__.__name__}: {self._clean(str(exc))})"
            else:
                self.request_log.append(f"GET {url} -> {response.status_code}")
                if response.status_code not in _RETRY_STATUSES:
                    return response
                problem = f"answered HTTP {response.status_code}"
                if attempt == attempts:
                    raise EnvironmentFault(
                        f"registry {url} {problem} after {attempts} attempt(s)",
                        hint="the registry is failing; t3track changed nothing, the next run tries again")
            if attempt == attempts:
                raise EnvironmentFault(
                    f"registry {url} {problem} after {attempts} attempt(s)",
                    hint="check the network and the `registry:` URL; nothing was changed")
            self._sleep(min(self._backoff_s * 2 ** (attempt - 1), max(0.0, deadline - time.monotonic())))
        raise AssertionError("unreachable")

    def _fetch(self, url: str, headers: dict[str, str], cap: int, deadline: float, timeout: float) -> Answer:
        with self._http.stream("GET", url, headers=headers, timeout=httpx.Timeout(timeout)) as response:
            body_cap = cap if response.status_code < 400 else ERROR_BODY_CAP
            try:
                content = b"" if response.status_code == 304 else _read_capped(response, body_cap, deadline)
            except _TooLarge:
                if response.status_code < 400:
                    raise
                content = b""
            return Answer(response.status_code, response.headers, content)

    def _raise_for_status(self, response: Answer, url: str, package: str | None) -> None:
        status = response.status_code
        if status < 400:
            return
        if status == 404:
            what = f"package {package!r}" if package else "the file"
            raise EnvironmentFault(f"registry {url} answered 404: {what} not found there",
                                   hint="check `package:` and `registry:` in the config")
        if status in (401, 403):
            raise EnvironmentFault(
                f"registry {url} answered {status}: not authorised",
                hint=f"set {TOKEN_ENV_VARS[0]} in t3track's environment to a token that can read the package")
        raise EnvironmentFault(f"registry {url} answered HTTP {status}: {_snippet(response)}")

    def _json(self, response: Answer, url: str) -> Any:
        try:
            return response.json()
        except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: JSON nested too deep
            raise EnvironmentFault(f"registry {url} sent malformed JSON: {_snippet(response)}",
                                   hint="a proxy or captive portal may be answering; check `registry:`") from None

    def _clean(self, text: str) -> str:
        return redact(text, [self._token] if self._token else [])

    # --- cache --------------------------------------------------------------------------------

    def _cache_path(self, package: str) -> Path:
        return self.cache_dir / "packuments" / (package_path(package) + ".json")

    def _read_cache(self, package: str) -> Packument | None:
        try:
            raw = json.loads(self._cache_path(package).read_text(encoding="utf-8"))
            return Packument(
                name=raw["name"],
                dist_tags=dict(raw["dist_tags"]),
                versions={v: VersionInfo(v, i["tarball"], i.get("integrity")) for v, i in raw["versions"].items()},
                time={v: t for v, s in raw["time"].items() if (t := parse_time(s)) is not None},
                etag=raw.get("etag"),
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None  # no cache, or a torn one: fetch again

    def _write_cache(self, package: str, packument: Packument) -> None:
        path = self._cache_path(package)
        ensure_private_dir(path.parent)
        body = {
            "name": packument.name,
            "etag": packument.etag,
            "dist_tags": packument.dist_tags,
            "versions": {v: {"tarball": i.tarball, "integrity": i.integrity} for v, i in packument.versions.items()},
            "time": {v: t.isoformat() for v, t in packument.time.items()},
        }
        atomic_write_text(path, json.dumps(body, sort_keys=True) + "\n")


def _parse_packument(package: str, data: Any, url: str, etag: str | None) -> Packument:
    if not isinstance(data, dict) or not isinstance(data.get("versions"), dict):
        raise EnvironmentFault(f"registry {url} sent no packument (no `versions` map)",
                               hint="check that `registry:` points at an npm registry")
    versions: dict[str, VersionInfo] = {}
    for version, doc in data["versions"].items():
        dist = doc.get("dist") if isinstance(doc, dict) else None
        if not isinstance(dist, dict) or not isinstance(dist.get("tarball"), str):
            continue  # a version without a tarball cannot be installed; the policy reports it missing
        integrity = dist.get("integrity")
        versions[version] = VersionInfo(version, dist["tarball"], integrity if isinstance(integrity, str) else None)
    raw_tags = data.get("dist-tags")
    tags = {k: v for k, v in raw_tags.items() if isinstance(v, str)} if isinstance(raw_tags, dict) else {}
    raw_time = data.get("time")
    times = {}
    if isinstance(raw_time, dict):
        times = {v: t for v, s in raw_time.items() if v in versions and (t := parse_time(s)) is not None}
    return Packument(name=str(data.get("name") or package), dist_tags=tags, versions=versions, time=times,
                     etag=etag)


def _snippet(response: Answer, limit: int = 120) -> str:
    text = response.text.strip().replace("\n", " ")
    return repr(text[:limit] + ("…" if len(text) > limit else "")) if text else "(empty body)"
