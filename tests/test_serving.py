"""t3track.host.serving: the one way t3track asks a server its version (status, drift, the readiness
polls, the live check): loopback only, None for anything but a 200 with a JSON serverVersion, and a
server that never finishes its answer cannot hold the caller."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from t3track.errors import UsageError
from t3track.host import serving

ANSWERS: dict[str, bytes] = {
    "length": b'HTTP/1.1 200 OK\r\nContent-Length: 26\r\n\r\n{"serverVersion":"0.0.42"}',
    "chunked": b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"ser\r\n14\r\nverVersion":"0.0.7"}\r\n0\r\n\r\n',
    "close": b'HTTP/1.0 200 OK\r\n\r\n{"serverVersion":"0.0.9"}',
    "not-200": b'HTTP/1.1 503 No\r\nContent-Length: 26\r\n\r\n{"serverVersion":"0.0.42"}',
    "html": b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n<html>",
    "garbage": b"\x00\xff not HTTP at all\r\n\r\n",
    "empty-version": b'HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n{"serverVersion":""}',
    "not-object": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n[1]",
    "too-big": b"HTTP/1.1 200 OK\r\nContent-Length: 70000\r\n\r\n" + b"a" * 70000,
    "endless": b"HTTP/1.1 200 OK\r\n\r\n" + b" " * 200000,
}
EXPECTED = {"length": "0.0.42", "chunked": "0.0.7", "close": "0.0.9"}
TRICKLE_FOR_S = 60  # far longer than any timeout below: only a client that gives up ends it sooner


@pytest.fixture
def server() -> Iterator[tuple[str, dict]]:
    chosen: dict = {"answer": "length"}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            answer = chosen["answer"]
            chosen["path"] = self.path
            if answer == "trickle":  # one byte of a header line now and then, never its end
                self.wfile.write(b"HTTP/1.1 200 OK\r\nx-a: ")
                ends = time.monotonic() + TRICKLE_FOR_S
                try:
                    while time.monotonic() < ends:
                        self.wfile.write(b"b")
                        self.wfile.flush()
                        time.sleep(0.05)
                except OSError:
                    chosen["client_gave_up"] = True
                return
            self.wfile.write(ANSWERS[answer])
            self.wfile.flush()
            time.sleep(0.3)  # held open: a complete answer is taken without waiting for the close

        def log_message(self, *args: object) -> None:
            pass

        def handle(self) -> None:
            try:
                super().handle()
            except OSError:
                pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", chosen
    httpd.shutdown()


@pytest.mark.parametrize("answer", sorted(ANSWERS))
def test_only_a_200_with_a_json_server_version_is_an_answer(server, answer):
    url, chosen = server
    chosen["answer"] = answer
    assert serving.server_version(url, timeout=2.0) == EXPECTED.get(answer)
    assert chosen["path"] == "/.well-known/t3/environment"


def test_a_server_that_trickles_its_answer_is_given_up_on_at_the_timeout(server):
    url, chosen = server
    chosen["answer"] = "trickle"
    assert serving.server_version(url, timeout=0.5) is None
    deadline = time.monotonic() + TRICKLE_FOR_S
    while "client_gave_up" not in chosen and time.monotonic() < deadline:
        time.sleep(0.05)
    assert chosen.get("client_gave_up")  # it hung up: the server did not end it


def test_a_server_that_says_nothing_or_is_not_there_is_none():
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # connects, never answers
        assert serving.server_version(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.5) is None
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    assert serving.server_version(f"http://127.0.0.1:{port}", timeout=1.0) is None  # nothing listening


@pytest.mark.parametrize("url", ["http://example.com", "http://10.1.2.3:3773", "ftp://127.0.0.1:21",
                                 "127.0.0.1:3773", "http://127.0.0.1:port"])
def test_anything_but_a_loopback_http_url_is_refused_before_connecting(url):
    with pytest.raises(UsageError):
        serving.server_version(url, timeout=1.0)


def test_localhost_and_ipv6_loopback_are_loopback():
    for url in ("http://localhost:3773", "http://[::1]:3773", "https://127.0.0.2/x"):
        assert serving.require_loopback(url) == url
