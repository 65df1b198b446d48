"""t3track.host.loopback: the serverVersion read of status and the drift check, on a plain socket to
127.0.0.1, bounded in time and size, None for anything but a 200 with a JSON serverVersion."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from t3track.host import loopback

ANSWERS: dict[str, bytes] = {
    "length": b'HTTP/1.1 200 OK\r\nContent-Length: 26\r\n\r\n{"serverVersion":"0.0.42"}',
    "chunked": b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"ser\r\n14\r\nverVersion":"0.0.7"}\r\n0\r\n\r\n',
    "close": b'HTTP/1.0 200 OK\r\n\r\n{"serverVersion":"0.0.9"}',
    "not-200": b'HTTP/1.1 503 No\r\nContent-Length: 26\r\n\r\n{"serverVersion":"0.0.42"}',
    "html": b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n<html>",
    "empty-version": b'HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n{"serverVersion":""}',
    "not-object": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n[1]",
    "too-big": b"HTTP/1.1 200 OK\r\nContent-Length: 70000\r\n\r\n" + b"a" * 70000,
    "endless": b"HTTP/1.1 200 OK\r\n\r\n" + b" " * 200000,
}
EXPECTED = {"length": "0.0.42", "chunked": "0.0.7", "close": "0.0.9"}


@pytest.fixture
def server() -> Iterator[tuple[int, dict[str, str]]]:
    chosen = {"answer": "length"}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            answer = chosen["answer"]
            if answer == "trickle":
                self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                for _ in range(30):
                    self.wfile.write(b"x-a: b\r\n")
                    self.wfile.flush()
                    time.sleep(0.1)
                return
            assert self.path == loopback.ENVIRONMENT_PATH
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
    yield httpd.server_address[1], chosen
    httpd.shutdown()


@pytest.mark.parametrize("answer", sorted(ANSWERS))
def test_only_a_200_with_a_json_server_version_is_an_answer(server, answer):
    port, chosen = server
    chosen["answer"] = answer
    started = time.monotonic()
    assert loopback.server_version(port, timeout=2.0) == EXPECTED.get(answer)
    assert time.monotonic() - started < 1.5


def test_a_server_that_trickles_or_says_nothing_costs_the_timeout_and_no_more(server):
    port, chosen = server
    chosen["answer"] = "trickle"
    started = time.monotonic()
    assert loopback.server_version(port, timeout=0.5) is None
    assert time.monotonic() - started < 1.0
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        started = time.monotonic()
        assert loopback.server_version(silent.getsockname()[1], timeout=0.5) is None
        assert time.monotonic() - started < 1.0


def test_nothing_listening_is_none_and_a_port_is_all_it_takes():
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    assert loopback.server_version(port, timeout=1.0) is None
    for bad in ("3773", 0, 70000, True, "example.com:80"):
        with pytest.raises(ValueError):
            loopback.server_version(bad, timeout=1.0)  # type: ignore[arg-type]
