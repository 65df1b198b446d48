"""The `serverVersion` a user's live server reports, read with the standard library alone.

`t3track status` and the night's drift check ask every user's server once: httpx (its import and a
TLS context per client) cost several times the answer itself, and neither needs a session, a cookie
or redirects. What this reads is the unauthenticated `GET /.well-known/t3/environment` of
t3code-contract.md, as t3track.host.probe.server_version does for the gates and the live check.

It only ever talks to 127.0.0.1 (a port is all it takes), uses no proxy (http.client reads none
from the environment), follows no redirect, and bounds the exchange: `timeout` seconds for the whole
of it (a watchdog shuts the socket, so a server that trickles its headers cannot hold status up) and
at most MAX_BYTES of body. Whatever goes wrong, the answer is None: "not answering".
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

ENVIRONMENT_PATH = "/.well-known/t3/environment"
MAX_BYTES = 64 << 10  # the document is a few hundred bytes


def server_version(port: int, timeout: float) -> str | None:
    """The serverVersion the server on 127.0.0.1:`port` reports, or None when it does not answer
    (refused, too slow, not 200, not a JSON object with a non-empty string serverVersion, too big)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"not a TCP port: {port!r}")
    deadline = time.monotonic() + timeout
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.connect()
    except OSError:
        return None
    sock = conn.sock  # kept: http.client drops it from `conn` once the response says it will close
    cut = threading.Event()
    watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), _cut, (sock, cut))
    watchdog.daemon = True
    watchdog.start()
    try:
        conn.request("GET", ENVIRONMENT_PATH, headers={"accept": "application/json", "connection": "close"})
        response = conn.getresponse()
        if response.status != 200:
            return None
        body = response.read(MAX_BYTES + 1)
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        watchdog.cancel()
        conn.close()
    if cut.is_set() or len(body) > MAX_BYTES:  # cut short: what was read may be a torn document
        return None
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    version = doc.get("serverVersion") if isinstance(doc, dict) else None
    return version if isinstance(version, str) and version else None


def _cut(sock: socket.socket | None, cut: threading.Event) -> None:
    """The deadline passed: end every pending read (it then fails, and the answer is None)."""
    cut.set()
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
