"""What a T3 Code server on this host says it serves: the `serverVersion` of the unauthenticated
`GET /.well-known/t3/environment` (t3code-contract.md: there is no health endpoint, and `GET /`
answers 200 even when pairing is broken).

The one way t3track asks a server its version: `status`, the night's drift check, the sandbox's
readiness polls and the live check after a swap. On the standard library's http.client: `status`
asks every user's server and has no other use for httpx. Loopback only, no proxy, no redirect; the
whole exchange is bounded by `timeout` (a user's server that trickles its answer cannot hold
`status` or the night up) and by MAX_BYTES. Whatever goes wrong, the answer is None: "not answering".
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import socket
import threading
import time
from urllib.parse import urlsplit

from t3track.errors import UsageError

ENVIRONMENT_PATH = "/.well-known/t3/environment"
MAX_BYTES = 64 << 10  # the document is a few hundred bytes


def require_loopback(url: str) -> str:
    """t3track only ever talks to servers on this host: refuse anything else before connecting."""
    hint = "give the server as http://127.0.0.1:PORT"
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        _ = parts.port  # raises on a port that is not a number
    except (TypeError, ValueError, AttributeError):
        raise UsageError(f"{url!r} is not a URL", hint=hint) from None
    loopback = host == "localhost"
    if not loopback:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
    if parts.scheme not in ("http", "https") or not loopback:
        raise UsageError(f"{url} is not a loopback URL; t3track probes only servers on this host", hint=hint)
    return url


def server_version(url: str, timeout: float) -> str | None:
    """The serverVersion the server at `url` reports, or None when it does not answer within `timeout`
    seconds in all (refused, too slow, not 200, not a JSON object with a non-empty string
    serverVersion, too big)."""
    parts = urlsplit(require_loopback(url))
    kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    connection = kind(parts.hostname or "", parts.port, timeout=timeout)
    watchdog = _Watchdog(connection, timeout)
    try:
        connection.request("GET", parts.path.rstrip("/") + ENVIRONMENT_PATH, headers={"accept": "application/json"})
        response = connection.getresponse()
        body = response.read(MAX_BYTES + 1) if response.status == 200 else b""
    except (OSError, http.client.HTTPException):
        return None
    finally:
        watchdog.done()
        connection.close()
    try:
        doc = json.loads(body) if 0 < len(body) <= MAX_BYTES else None
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    version = doc.get("serverVersion") if isinstance(doc, dict) else None
    return version if isinstance(version, str) and version else None


class _Watchdog:
    """Cuts the connection when the whole exchange has taken `timeout`: http.client's own timeout
    bounds each read, and a server can answer one byte per read."""

    def __init__(self, connection: http.client.HTTPConnection, timeout: float):
        self._connection = connection
        self._lock = threading.Lock()
        self._finished = False
        self._timer = threading.Timer(timeout, self._cut)
        self._timer.daemon = True
        self._timer.start()

    def _cut(self) -> None:
        with self._lock:  # never after done(): the descriptor may belong to someone else by then
            if not self._finished and self._connection.sock is not None:
                try:
                    self._connection.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked read
                except OSError:
                    pass

    def done(self) -> None:
        self._timer.cancel()
        with self._lock:
            self._finished = True


# The real server accepts connections ~0.4 s before it answers, and never answers a request that
# arrives in that moment: readiness polls are frequent and their requests short, so a lost request
# costs little. A request that gets no answer in time lengthens the next one (a slow host is not
# failed by an impatient poll), until the caller says the server announced itself ready.
READY_POLL_S = 0.02
FIRST_REQUEST_S = 0.1
REQUEST_GROWTH = 1.5
MAX_REQUEST_S = 2.0


class ReadinessPoll:
    """Polls of one server's `serverVersion` while it starts, each request as short as its answers
    so far allow."""

    def __init__(self, url: str):
        self.url = require_loopback(url)
        self.request_s = FIRST_REQUEST_S
        self.announced = False

    def version(self, deadline: float, *, announced: bool = False) -> str | None:
        """One poll (at most until `deadline`). `announced`: the server said it is ready (its log),
        so short requests start over."""
        if announced and not self.announced:
            self.announced, self.request_s = True, FIRST_REQUEST_S
        request_s = min(self.request_s, max(0.05, deadline - time.monotonic()))
        asked = time.monotonic()
        version = server_version(self.url, timeout=request_s)
        if version is None and time.monotonic() - asked >= request_s * 0.9:  # connected, no answer in time
            self.request_s = min(MAX_REQUEST_S, self.request_s * REQUEST_GROWTH)
        return version
