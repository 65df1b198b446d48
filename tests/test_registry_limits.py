"""The registry cannot take the night or the memory: a deadline per request, caps per kind of
document counted on decoded bytes, bombs refused, and what reaches history bounded. Every server
here listens on 127.0.0.1."""

from __future__ import annotations

import gzip
import json
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from tests.support.tags import TagsOnly

from t3track.config import parse_config
from t3track.errors import EnvironmentFault
from t3track.host.registry import Limits, RegistryClient
from t3track.night import policy
from t3track.state import State, StateStore

Handler = Callable[[BaseHTTPRequestHandler], None]


@contextmanager
def registry(handle: Handler) -> Iterator[str]:
    class H(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            try:
                handle(self)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), H)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def send(handler: BaseHTTPRequestHandler, body: bytes, *, encoding: str | None = None, status: int = 200) -> None:
    handler.send_response(status)
    handler.send_header("content-type", "application/json")
    if encoding:
        handler.send_header("content-encoding", encoding)
    handler.send_header("content-length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def test_a_dist_tags_answer_dripping_a_byte_at_a_time_is_cut_off_at_the_deadline(tmp_path):
    def drip(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("content-type", "application/json")
        handler.end_headers()
        for _ in range(200):
            handler.wfile.write(b" ")
            handler.wfile.flush()
            time.sleep(0.2)

    with registry(drip) as url, RegistryClient(url, tmp_path / "cache", retries=0,
                                               limits=Limits(deadline_s=1.5)) as client:
        started = time.monotonic()
        with pytest.raises(EnvironmentFault) as caught:
            client.dist_tags("t3")
    assert time.monotonic() - started < 30  # a deadline, not a speed: without it the drip lasts 40 s
    assert "deadline" in caught.value.message


def test_the_deadline_is_configurable_and_has_a_sane_default(tmp_path):
    config = parse_config({"state_dir": str(tmp_path), "registry": "http://127.0.0.1:9/",
                           "registry_limits": {"deadline": "30s", "packument": "8MiB"}})
    client = RegistryClient.for_config(config)
    try:
        assert client.limits.deadline_s == 30 and client.limits.packument == 8 << 20
        assert client.limits.dist_tags == 64 << 10 and client.limits.tarball == 512 << 20
    finally:
        client.close()
    assert RegistryClient("http://127.0.0.1:9/", tmp_path).limits == Limits()


def test_a_huge_dist_tag_is_refused_without_holding_it(tmp_path):
    huge = json.dumps({"nightly": "0.0.43-nightly.20261201." + "9" * (4 << 20)}).encode()
    with registry(lambda h: send(h, huge)) as url, RegistryClient(url, tmp_path / "cache", retries=0) as client:
        tracemalloc.start()
        try:
            with pytest.raises(EnvironmentFault) as caught:
                client.dist_tags("t3")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert "over the cap" in caught.value.message and str(64 << 10) in caught.value.message
    assert peak < 2 << 20


def test_a_gzip_bomb_stops_at_the_cap_and_never_expands_in_memory(tmp_path):
    bomb = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    body = bomb.compress(b'{"versions": {"' + b"0" * (256 << 20)) + bomb.flush()  # 256 MiB in ~250 KiB
    assert len(body) < 1 << 20
    with registry(lambda h: send(h, body, encoding="gzip")) as url, \
            RegistryClient(url, tmp_path / "cache", retries=0, limits=Limits(packument=4 << 20)) as client:
        tracemalloc.start()
        try:
            with pytest.raises(EnvironmentFault) as caught:
                client.packument("t3")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert "over the cap" in caught.value.message
    assert peak < 32 << 20


def test_a_gzipped_packument_under_its_cap_is_read_as_before(tmp_path):
    doc = {"name": "t3", "dist-tags": {"nightly": "0.0.43-nightly.20261201.1"},
           "versions": {"0.0.43-nightly.20261201.1": {"dist": {"tarball": "http://127.0.0.1:9/t.tgz"}}}}
    with registry(lambda h: send(h, gzip.compress(json.dumps(doc).encode()), encoding="gzip")) as url, \
            RegistryClient(url, tmp_path / "cache", retries=0) as client:
        assert list(client.packument("t3").versions) == ["0.0.43-nightly.20261201.1"]


def test_an_unknown_content_encoding_is_refused(tmp_path):
    with registry(lambda h: send(h, b"\x00" * 64, encoding="br")) as url, \
            RegistryClient(url, tmp_path / "cache", retries=0) as client:
        with pytest.raises(EnvironmentFault, match="Content-Encoding"):
            client.dist_tags("t3")


def test_deeply_nested_json_is_malformed_json_not_a_crash(tmp_path):
    nested = b"[" * 100_000 + b"]" * 100_000
    with registry(lambda h: send(h, nested)) as url, RegistryClient(url, tmp_path / "cache", retries=0) as client:
        with pytest.raises(EnvironmentFault, match="malformed JSON"):
            client.packument("t3")


def test_what_a_tag_says_reaches_history_bounded(tmp_path):
    config = parse_config({"state_dir": str(tmp_path)})
    decision = policy.resolve(config, State(current="0.0.42"), TagsOnly("x" * 60_000), datetime.now(UTC))
    assert decision.action == "refused" and len(decision.reason) < 1000
    store = StateStore(tmp_path / "state")
    store.record("run", by="t3track", reason="y" * 5_000_000, gates=["z" * 100_000])
    line = (tmp_path / "state" / "history.jsonl").read_bytes()
    assert len(line) < 64 << 10
    assert store.history()[0]["event"] == "run"
