import gzip
import json
import stat
from datetime import UTC, datetime

import httpx
import pytest
import respx

from t3track import runner
from t3track.config import Config
from t3track.errors import EnvironmentFault, ExitCode
from t3track.host import registry
from t3track.host.registry import RegistryClient, VersionInfo, registry_token, resolve_registry_url

BASE = "https://registry.test/"
NIGHTLY = "0.0.43-nightly.20261126.2901"
INTEGRITY = "sha512-" + "A" * 86 + "=="
TAGS_PATH = "/-/package/t3/dist-tags"


def packument_doc(with_time=True):
    doc = {
        "name": "t3",
        "dist-tags": {"latest": "0.0.42", "nightly": NIGHTLY},
        "versions": {
            "0.0.42": {"version": "0.0.42", "dist": {"tarball": f"{BASE}t3/-/t3-0.0.42.tgz", "integrity": INTEGRITY}},
            NIGHTLY: {"version": NIGHTLY, "dist": {"tarball": f"{BASE}t3/-/t3-{NIGHTLY}.tgz", "integrity": INTEGRITY}},
        },
    }
    if with_time:
        doc["time"] = {"created": "2026-01-01T00:00:00.000Z", "0.0.42": "2026-11-01T00:00:00.000Z",
                       NIGHTLY: "2026-11-26T03:00:00.000Z"}
    return doc


@pytest.fixture
def mock():
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


@pytest.fixture
def sleeps():
    return []


@pytest.fixture
def client(tmp_path, sleeps):
    with RegistryClient(BASE, tmp_path / "cache", sleep=sleeps.append, retries=2) as c:
        yield c


def test_dist_tags_is_one_small_get(mock, client):
    route = mock.get(TAGS_PATH).respond(json={"latest": "0.0.42", "nightly": NIGHTLY})
    assert client.dist_tags("t3") == {"latest": "0.0.42", "nightly": NIGHTLY}
    assert route.call_count == 1 and len(mock.calls) == 1


def test_scoped_package_names_are_encoded_in_the_path(mock, client):
    route = mock.get("/-/package/@t3code%2Ft3/dist-tags").respond(json={"nightly": NIGHTLY})
    assert client.dist_tags("@t3code/t3") == {"nightly": NIGHTLY}
    assert route.called


def test_packument_gives_versions_with_tarball_integrity_and_publish_time(mock, client):
    mock.get("/t3").respond(json=packument_doc(), headers={"ETag": '"v1"'})
    doc = client.packument("t3")
    assert doc.versions[NIGHTLY] == VersionInfo(NIGHTLY, f"{BASE}t3/-/t3-{NIGHTLY}.tgz", INTEGRITY)
    assert doc.time[NIGHTLY] == datetime(2026, 11, 26, 3, tzinfo=UTC)
    assert "created" not in doc.time
    assert doc.dist_tags["nightly"] == NIGHTLY


def test_packument_cache_is_a_private_file_in_the_cache_dir(mock, client, tmp_path):
    mock.get("/t3").respond(json=packument_doc(), headers={"ETag": '"v1"'})
    client.packument("t3")
    cache = tmp_path / "cache" / "packuments" / "t3.json"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert json.loads(cache.read_text())["etag"] == '"v1"'


def test_packument_is_revalidated_with_if_none_match_and_a_304_uses_the_cache(mock, tmp_path):
    route = mock.get("/t3")
    route.side_effect = [httpx.Response(200, json=packument_doc(), headers={"ETag": '"v1"'}), httpx.Response(304)]
    with RegistryClient(BASE, tmp_path / "cache") as first:
        first.packument("t3")
    with RegistryClient(BASE, tmp_path / "cache") as second:
        doc = second.packument("t3")
    assert route.calls[1].request.headers["If-None-Match"] == '"v1"'
    assert NIGHTLY in doc.versions and doc.time[NIGHTLY].year == 2026


def test_a_registry_without_etag_gets_plain_requests(mock, tmp_path):
    route = mock.get("/t3").respond(json=packument_doc())
    for _ in range(2):
        with RegistryClient(BASE, tmp_path / "cache") as c:
            assert NIGHTLY in c.packument("t3").versions
    assert all("If-None-Match" not in call.request.headers for call in route.calls)


def test_a_registry_without_time_gives_an_empty_time_map(mock, client):
    mock.get("/t3").respond(json=packument_doc(with_time=False))
    doc = client.packument("t3")
    assert doc.time == {} and NIGHTLY in doc.versions


def test_gzip_answers_are_decoded_and_gzip_is_asked_for(mock, client):
    body = gzip.compress(json.dumps(packument_doc()).encode())
    route = mock.get("/t3").respond(content=body, headers={"Content-Encoding": "gzip",
                                                            "Content-Type": "application/json"})
    assert NIGHTLY in client.packument("t3").versions
    assert "gzip" in route.calls[0].request.headers["Accept-Encoding"]


def test_packument_is_fetched_once_per_client(mock, client):
    route = mock.get("/t3").respond(json=packument_doc())
    client.packument("t3")
    client.packument("t3")
    assert route.call_count == 1


def test_timeout_is_retried_then_reported_with_the_url(mock, client, sleeps):
    route = mock.get(TAGS_PATH).mock(side_effect=httpx.ConnectTimeout("slow"))
    with pytest.raises(EnvironmentFault) as caught:
        client.dist_tags("t3")
    assert caught.value.exit_code == ExitCode.ENVIRONMENT
    assert f"{BASE}-/package/t3/dist-tags" in caught.value.message and "timed out" in caught.value.message
    assert route.call_count == 3
    assert sleeps == [0.5, 1.0]


def test_a_500_then_success_is_retried_after_a_backoff(mock, client, sleeps):
    mock.get(TAGS_PATH).side_effect = [httpx.Response(500), httpx.Response(200, json={"nightly": NIGHTLY})]
    assert client.dist_tags("t3") == {"nightly": NIGHTLY}
    assert sleeps == [0.5]


def test_500s_until_retries_run_out_is_an_environment_fault(mock, client):
    route = mock.get(TAGS_PATH).respond(500)
    with pytest.raises(EnvironmentFault) as caught:
        client.dist_tags("t3")
    assert "HTTP 500" in caught.value.message and "dist-tags" in caught.value.message
    assert route.call_count == 3


def test_connection_refused_is_an_environment_fault(mock, client):
    mock.get(TAGS_PATH).mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(EnvironmentFault, match="connection failed"):
        client.dist_tags("t3")


def test_404_is_not_retried_and_names_the_package(mock, client):
    route = mock.get("/t3").respond(404, json={"error": "not found"})
    with pytest.raises(EnvironmentFault) as caught:
        client.packument("t3")
    assert "404" in caught.value.message and "'t3'" in caught.value.message and BASE in caught.value.message
    assert route.call_count == 1


def test_401_hints_at_the_token_variable(mock, client):
    mock.get(TAGS_PATH).respond(401)
    with pytest.raises(EnvironmentFault) as caught:
        client.dist_tags("t3")
    assert "T3TRACK_NPM_TOKEN" in caught.value.hint


def test_malformed_json_is_an_environment_fault(mock, client):
    mock.get("/t3").respond(200, content=b"<html>captive portal</html>")
    with pytest.raises(EnvironmentFault, match="malformed JSON"):
        client.packument("t3")


def test_a_document_without_versions_is_refused(mock, client):
    mock.get("/t3").respond(json={"name": "t3"})
    with pytest.raises(EnvironmentFault, match="no `versions`"):
        client.packument("t3")


def test_dist_tags_that_are_not_a_string_map_are_refused(mock, client):
    mock.get(TAGS_PATH).respond(json=["nightly"])
    with pytest.raises(EnvironmentFault, match="not a dist-tags map"):
        client.dist_tags("t3")


def test_token_goes_to_the_registry_host_only(mock, tmp_path):
    tags = mock.get(TAGS_PATH).respond(json={})
    elsewhere = mock.get("https://cdn.example/t3.tgz").respond(content=b"x")
    with RegistryClient(BASE, tmp_path / "cache", token="s3cret-token") as c:
        c.dist_tags("t3")
        c.tarball("https://cdn.example/t3.tgz")
    assert tags.calls[0].request.headers["Authorization"] == "Bearer s3cret-token"
    assert "Authorization" not in elsewhere.calls[0].request.headers


def test_the_token_never_appears_in_errors(mock, tmp_path):
    mock.get(TAGS_PATH).mock(side_effect=httpx.ConnectError("proxy said Bearer s3cret-token-value"))
    with RegistryClient(BASE, tmp_path / "cache", token="s3cret-token-value", retries=0) as c:
        with pytest.raises(EnvironmentFault) as caught:
            c.dist_tags("t3")
    assert "s3cret-token-value" not in caught.value.message


def test_token_comes_from_t3track_variable_before_npm_token():
    assert registry_token({"NPM_TOKEN": "b", "T3TRACK_NPM_TOKEN": "a"}) == "a"
    assert registry_token({"NPM_TOKEN": "b"}) == "b"
    assert registry_token({}) is None


def test_registry_url_from_config_does_not_ask_npm(monkeypatch):
    monkeypatch.setattr(registry.runner, "run", lambda *a, **k: pytest.fail("npm was asked"))
    assert resolve_registry_url(Config(registry="https://npm.example/r")) == "https://npm.example/r/"


def test_registry_url_falls_back_to_npm_config(monkeypatch):
    seen = []

    def fake_run(argv, **kwargs):
        seen.append(argv)
        return runner.Completed(list(argv), 0, "https://mirror.example\n", "", 0.1)

    monkeypatch.setattr(registry.runner, "run", fake_run)
    assert resolve_registry_url(Config()) == "https://mirror.example/"
    assert seen == [["npm", "config", "get", "registry"]]


def test_npm_failing_to_say_the_registry_is_an_environment_fault(monkeypatch):
    monkeypatch.setattr(registry.runner, "run",
                        lambda argv, **k: runner.Completed(list(argv), 1, "", "npm ERR! broken", 0.1))
    with pytest.raises(EnvironmentFault, match="npm config get registry"):
        resolve_registry_url(Config())


# --- against a registry process on loopback (ETag, 304 and gzip for real) ----------------------

def test_a_registry_process_answers_the_revalidation_with_304_and_gzip(tmp_path):
    from tests.support.registry_server import make_package_tarball, serve

    with serve() as server:
        server.publish("t3", NIGHTLY, make_package_tarball("t3", NIGHTLY), tag="nightly",
                       published_at=datetime(2026, 11, 26, 3, tzinfo=UTC))
        for _ in range(2):
            with RegistryClient(server.url, tmp_path / "cache") as c:
                doc = c.packument("t3")
        statuses = [r.status for r in server.requests_to("/t3")]
        first_encoding = server.requests[0].headers.get("accept-encoding", "")
    assert statuses == [200, 304]
    assert "gzip" in first_encoding
    assert doc.time[NIGHTLY] == datetime(2026, 11, 26, 3, tzinfo=UTC)
