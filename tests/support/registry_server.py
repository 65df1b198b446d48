"""A small npm registry on 127.0.0.1 for tests and the end-to-end demo (standard library only).

Serves what `npm install` and t3track read:
  GET /<name>                       full packument with real `time`, ETag + 304, optional gzip
  GET /-/package/<name>/dist-tags   the dist-tags map
  GET /<name>/-/<file>.tgz          tarballs, whose dist.integrity is the sha512 of the bytes published

Set up through Python, not `npm publish`:

    with serve() as registry:
        registry.publish("t3", "0.0.43-nightly.20261126.1", make_package_tarball("t3", "0.0.43-…"),
                         tag="nightly", published_at=datetime(2026, 11, 26, tzinfo=timezone.utc))
        registry.url            # http://127.0.0.1:PORT/
        registry.requests       # [RequestRecord(method, path, headers, status), ...]

Standalone: `python -m tests.support.registry_server --port 4873 --data DIR [--tag nightly=VERSION]`
publishes every *.tgz in DIR (name and version read from its package.json).
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import io
import json
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    headers: dict[str, str]
    status: int


@dataclass
class _Published:
    version: str
    manifest: dict[str, Any]
    tarball: bytes           # what is served (tamper() may change it)
    integrity: str           # sha512 of the bytes as published
    published_at: datetime


@dataclass
class _Package:
    name: str
    versions: dict[str, _Published] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def sri_sha512(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def make_package_tarball(name: str, version: str, *, bin_name: str = "t3", script: str | None = None,
                         files: dict[str, str | bytes] | None = None, extra_manifest: dict[str, Any] | None = None) -> bytes:
    """An npm tarball (`package/` prefix) with package.json and an executable bin/<bin_name>, no deps."""
    manifest = {"name": name, "version": version, "bin": {bin_name: f"bin/{bin_name}"}, "license": "MIT"}
    manifest.update(extra_manifest or {})
    entries: dict[str, tuple[bytes, int]] = {
        "package.json": (json.dumps(manifest, indent=2).encode(), 0o644),
        f"bin/{bin_name}": ((script or f'#!/bin/sh\necho "{name} {version}"\n').encode(), 0o755),
    }
    for path, content in (files or {}).items():
        entries[path] = (content.encode() if isinstance(content, str) else content, 0o644)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path, (data, mode) in entries.items():
            info = tarfile.TarInfo(f"package/{path}")
            info.size, info.mode, info.mtime = len(data), mode, 499162500  # npm's fixed mtime
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def read_manifest(tarball: bytes) -> dict[str, Any]:
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        member = archive.extractfile("package/package.json")
        return json.loads(member.read()) if member else {}


class RegistryServer:
    """The registry's data and its HTTP server. Thread-safe: tests change it while npm reads it."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, etag: bool = True, gzip_ok: bool = True,
                 send_time: bool = True, token: str | None = None):
        self.etag, self.gzip_ok, self.send_time, self.token = etag, gzip_ok, send_time, token
        self.requests: list[RequestRecord] = []
        self._packages: dict[str, _Package] = {}
        self._failures: list[list[Any]] = []  # [path substring, status, remaining]
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer((host, port), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    # --- setup API ----------------------------------------------------------------------------

    def publish(self, name: str, version: str, tarball: bytes, *, tag: str | None = None,
                published_at: datetime | None = None) -> str:
        """Publish `tarball` as name@version; returns its dist.integrity. The first publish sets `latest`."""
        manifest = read_manifest(tarball)
        with self._lock:
            package = self._packages.setdefault(name, _Package(name))
            package.versions[version] = _Published(version, manifest, tarball, sri_sha512(tarball),
                                                   published_at or datetime.now(UTC))
            package.tags.setdefault("latest", version)
            if tag:
                package.tags[tag] = version
            return package.versions[version].integrity

    def set_tag(self, name: str, tag: str, version: str) -> None:
        with self._lock:
            self._packages[name].tags[tag] = version

    def tamper(self, name: str, version: str, tarball: bytes) -> None:
        """Serve other bytes for name@version while the packument keeps the published integrity."""
        with self._lock:
            self._packages[name].versions[version].tarball = tarball

    def fail_next(self, path_contains: str, status: int = 500, times: int = 1) -> None:
        """Answer the next `times` requests whose path contains `path_contains` with `status`."""
        with self._lock:
            self._failures.append([path_contains, status, times])

    def requests_to(self, path_contains: str) -> list[RequestRecord]:
        with self._lock:
            return [r for r in self.requests if path_contains in r.path]

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> RegistryServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="registry-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # --- documents ----------------------------------------------------------------------------

    def tarball_url(self, name: str, version: str) -> str:
        return f"{self.url}{quote(name, safe='@')}/-/{name.rsplit('/', 1)[-1]}-{version}.tgz"

    def _packument(self, name: str) -> dict[str, Any] | None:
        package = self._packages.get(name)
        if package is None:
            return None
        versions = {}
        for version, item in package.versions.items():
            doc = dict(item.manifest) | {"name": name, "version": version}
            doc["dist"] = {"tarball": self.tarball_url(name, version), "integrity": item.integrity,
                           "shasum": hashlib.sha1(item.tarball).hexdigest()}
            versions[version] = doc
        body: dict[str, Any] = {"_id": name, "name": name, "dist-tags": dict(package.tags), "versions": versions}
        if self.send_time and package.versions:
            stamps = {v: _iso(p.published_at) for v, p in package.versions.items()}
            body["time"] = {"created": min(stamps.values()), "modified": max(stamps.values()), **stamps}
        return body

    def _route(self, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            for failure in self._failures:
                if failure[0] in path and failure[2] > 0:
                    failure[2] -= 1
                    return failure[1], {"Content-Type": "text/plain"}, b"injected failure\n"
            if self.token is not None and headers.get("authorization") != f"Bearer {self.token}":
                return 401, {"Content-Type": "application/json"}, b'{"error":"unauthorized"}'
            parts = [unquote(p) for p in path.strip("/").split("/")]
            if len(parts) >= 4 and parts[0] == "-" and parts[1] == "package" and parts[-1] == "dist-tags":
                package = self._packages.get("/".join(parts[2:-1]))
                if package is None:
                    return 404, {"Content-Type": "application/json"}, b'{"error":"not found"}'
                return 200, {"Content-Type": "application/json"}, json.dumps(package.tags).encode()
            if "-" in parts and parts[-1].endswith(".tgz"):
                name = "/".join(parts[: parts.index("-")])
                package = self._packages.get(name)
                for version, item in (package.versions.items() if package else ()):
                    if parts[-1] == f"{name.rsplit('/', 1)[-1]}-{version}.tgz":
                        return 200, {"Content-Type": "application/octet-stream"}, item.tarball
                return 404, {"Content-Type": "application/json"}, b'{"error":"not found"}'
            body = self._packument("/".join(parts))
        if body is None:
            return 404, {"Content-Type": "application/json"}, b'{"error":"not found"}'
        data = json.dumps(body, sort_keys=True).encode()
        out = {"Content-Type": "application/json"}
        if self.etag:
            tag = '"' + hashlib.sha1(data).hexdigest() + '"'
            out["ETag"] = tag
            if headers.get("if-none-match") == tag:
                return 304, out, b""
        return 200, out, data


def _handler_for(server: RegistryServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            headers = {k.lower(): v for k, v in self.headers.items()}
            path = urlsplit(self.path).path
            status, out, body = server._route(path, headers)
            if body and server.gzip_ok and "gzip" in headers.get("accept-encoding", "") and status == 200:
                body = gzip.compress(body)
                out["Content-Encoding"] = "gzip"
            with server._lock:
                server.requests.append(RequestRecord("GET", path, headers, status))
            self.send_response(status)
            for key, value in out.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read .requests
            pass

    return Handler


@contextmanager
def serve(**options: Any) -> Iterator[RegistryServer]:
    """A running registry on 127.0.0.1:<free port>, stopped on exit."""
    server = RegistryServer(**options).start()
    try:
        yield server
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=4873)
    parser.add_argument("--data", type=Path, help="publish every *.tgz in this directory")
    parser.add_argument("--tag", action="append", default=[], metavar="TAG=VERSION")
    args = parser.parse_args(argv)
    server = RegistryServer(port=args.port)
    for path in sorted(args.data.glob("*.tgz")) if args.data else []:
        data = path.read_bytes()
        manifest = read_manifest(data)
        server.publish(manifest["name"], manifest["version"], data)
    for item in args.tag:
        tag, _, version = item.partition("=")
        for name, package in server._packages.items():
            if version in package.versions:
                server.set_tag(name, tag, version)
    print(f"registry on {server.url}", flush=True)
    try:
        server._httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server._httpd.server_close()


if __name__ == "__main__":
    main()
