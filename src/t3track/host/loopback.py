"""The `serverVersion` a user's live server reports, read with the standard library alone.

`t3track status` and the night's drift check ask every user's server once: httpx (its import and a
TLS context per client) cost several times the answer itself, and neither needs a session, a cookie
or redirects. What this reads is the unauthenticated `GET /.well-known/t3/environment` of
t3code-contract.md, as t3track.host.probe.server_version does for the gates and the live check.

One HTTP/1.1 GET on a plain socket (http.client would bring the email package and ssl: ~15 ms more;
the socket module itself builds four IntEnums at import, ~3 ms, so this takes its C core, _socket,
whose socket type `socket.socket` only subclasses):
it only ever connects to 127.0.0.1 (a port is all it takes), uses no proxy, follows no redirect,
and bounds the exchange: `timeout` seconds for all of it (every read waits only for what is left,
so a server that trickles its headers cannot hold status up) and MAX_BYTES for the whole answer.
The body is taken by Content-Length, chunked, or up to the close. Whatever goes wrong, the answer
is None: "not answering".
"""

from __future__ import annotations

import _socket
import json
import time

ENVIRONMENT_PATH = "/.well-known/t3/environment"
MAX_BYTES = 64 << 10  # the whole answer, headers and body: the document is a few hundred bytes


def server_version(port: int, timeout: float) -> str | None:
    """The serverVersion the server on 127.0.0.1:`port` reports, or None when it does not answer
    (refused, too slow, not 200, not a JSON object with a non-empty string serverVersion, too big)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ValueError(f"not a TCP port: {port!r}")
    body = _get(port, timeout)
    if body is None:
        return None
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    version = doc.get("serverVersion") if isinstance(doc, dict) else None
    return version if isinstance(version, str) and version else None


def _get(port: int, timeout: float) -> bytes | None:
    """The body of a 200 answer to GET ENVIRONMENT_PATH, read within `timeout` seconds in all."""
    deadline = time.monotonic() + timeout
    request = (f"GET {ENVIRONMENT_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\n"
               "Connection: close\r\n\r\n").encode()
    try:
        sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    except OSError:
        return None
    try:
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", port))  # an address, not a name: no resolver, no idna codec
        sock.sendall(request)
        data = b""
        while True:
            done, body = _parse(data, closed=False)
            if done:
                return body
            left = deadline - time.monotonic()
            if left <= 0 or len(data) > MAX_BYTES:
                return None
            sock.settimeout(left)
            chunk = sock.recv(65536)
            if not chunk:  # closed: what came is all there is
                return _parse(data, closed=True)[1]
            data += chunk
    except OSError:
        return None
    finally:
        sock.close()


_PARTIAL = (False, None)
_REFUSED = (True, None)


def _parse(data: bytes, closed: bool) -> tuple[bool, bytes | None]:
    """(True, body) for a complete 200 answer in `data`, (True, None) for any other answer, and
    (False, None) while more must come (Content-Length, chunked, or up to the close)."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return _REFUSED if closed else _PARTIAL
    lines = head.split(b"\r\n")
    status = lines[0].split(b" ", 2)
    if len(status) < 2 or not status[0].startswith(b"HTTP/1.") or status[1] != b"200":
        return _REFUSED
    headers = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            return _REFUSED
        headers[name.strip().lower()] = value.strip().lower()
    if headers.get(b"transfer-encoding", b"identity") != b"identity":
        if headers[b"transfer-encoding"] != b"chunked":
            return _REFUSED
        return _unchunk(rest, closed)
    length = headers.get(b"content-length")
    if length is not None:
        if not length.isdigit():
            return _REFUSED
        size = int(length)
        if size > MAX_BYTES:
            return _REFUSED
        if len(rest) >= size:
            return True, rest[:size]
        return _REFUSED if closed else _PARTIAL
    return (True, rest) if closed else _PARTIAL


def _unchunk(rest: bytes, closed: bool) -> tuple[bool, bytes | None]:
    body = b""
    while True:
        line, sep, rest = rest.partition(b"\r\n")
        if not sep:
            return _REFUSED if closed else _PARTIAL
        digits = line.split(b";", 1)[0].strip()
        if not digits or len(digits) > 8 or digits.strip(b"0123456789abcdefABCDEF"):
            return _REFUSED
        size = int(digits, 16)
        if size == 0:
            return True, body  # trailers, if any, are not needed
        if len(rest) < size + 2:
            return _REFUSED if closed else _PARTIAL
        body += rest[:size]
        rest = rest[size + 2:]
