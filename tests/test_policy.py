import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import respx

from t3track.config import Config
from t3track.errors import EnvironmentFault
from t3track.host.registry import RegistryClient
from t3track.night.policy import record_failure, resolve
from t3track.state import Denial, Freeze, Pin, State

BASE = "https://registry.test/"
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
CURRENT = "0.0.43-nightly.20261120.2800"
OLDER = "0.0.43-nightly.20261119.2790"
SOAKED = "0.0.43-nightly.20261125.2890"   # published two days ago
NEWEST = "0.0.43-nightly.20261127.2901"   # published an hour ago
PREVIEW = "0.0.43-preview.20261127.2902"
TAGS = "/-/package/t3/dist-tags"
INTEGRITY = "sha512-" + "B" * 86 + "=="


DEFAULT_TIMES = {OLDER: NOW - timedelta(days=8), CURRENT: NOW - timedelta(days=7),
                 SOAKED: NOW - timedelta(days=2), NEWEST: NOW - timedelta(hours=1),
                 PREVIEW: NOW - timedelta(days=1)}


def packument(times=None, tag=NEWEST, versions=None, with_time=True):
    times = DEFAULT_TIMES if times is None else times
    names = versions if versions is not None else list(times)
    doc = {"name": "t3", "dist-tags": {"nightly": tag, "latest": "0.0.42"},
           "versions": {v: {"version": v, "dist": {"tarball": f"{BASE}t3/-/t3-{v}.tgz", "integrity": INTEGRITY}}
                        for v in names}}
    if with_time:
        doc["time"] = {v: t.strftime("%Y-%m-%dT%H:%M:%S.000Z") for v, t in times.items()}
    return doc


@pytest.fixture
def root(tmp_path):
    """An installed host: root/versions/<current>/ and root/current -> it."""
    root = tmp_path / "root"
    (root / "versions" / CURRENT).mkdir(parents=True)
    (root / "versions" / CURRENT / "package.json").write_text("{}")
    (root / "current").symlink_to(Path("versions") / CURRENT)
    return root


def snapshot(root):
    return sorted((str(p.relative_to(root)), p.is_symlink() and os.readlink(p)) for p in root.rglob("*"))


@pytest.fixture
def config(tmp_path, root):
    return Config(root=root, state_dir=tmp_path / "state", min_release_age="6h")


@pytest.fixture
def state():
    # Every version was first seen here long ago unless a test says otherwise.
    return State(current=CURRENT, first_seen={v: NOW - timedelta(days=10) for v in DEFAULT_TIMES})


@pytest.fixture
def mock():
    with respx.mock(base_url=BASE, assert_all_called=False) as router:
        yield router


@pytest.fixture
def client(tmp_path):
    with RegistryClient(BASE, tmp_path / "state" / "registry-cache", sleep=lambda s: None) as c:
        yield c


@pytest.fixture
def check_root(root):
    before = snapshot(root)
    yield lambda: snapshot(root) == before


def serve(mock, tag=NEWEST, doc=None):
    mock.get(TAGS).respond(json={"nightly": tag, "latest": "0.0.42"})
    return mock.get("/t3").respond(json=doc or packument(tag=tag))


# --- the cheap path ------------------------------------------------------------------------------

def test_a_night_with_no_new_nightly_costs_one_dist_tags_request(mock, client, config, state, check_root):
    serve(mock, tag=CURRENT)
    decision = resolve(config, state, client, NOW)
    assert decision.action == "noop" and "current" in decision.reason
    assert [call.request.url.path for call in mock.calls] == [TAGS]
    assert check_root()


def test_a_tag_that_did_not_move_since_the_cached_packument_costs_one_request(mock, tmp_path, config, state,
                                                                              check_root):
    serve(mock, tag=NEWEST)
    with RegistryClient(BASE, config.state_dir / "registry-cache") as yesterday:
        assert resolve(config, state, yesterday, NOW).candidate.source == "soaked"  # NEWEST too young then
    mock.reset()
    with RegistryClient(BASE, config.state_dir / "registry-cache") as tonight:
        decision = resolve(config, state, tonight, NOW + timedelta(hours=6))
    assert decision.candidate.version == NEWEST
    assert [call.request.url.path for call in mock.calls] == [TAGS]
    assert check_root()


def test_a_tag_that_moved_revalidates_the_cached_packument(mock, config, state, check_root):
    mock.get(TAGS).respond(json={"nightly": NEWEST})
    route = mock.get("/t3")
    route.side_effect = [httpx.Response(200, json=packument(tag=SOAKED), headers={"ETag": '"old"'}),
                         httpx.Response(200, json=packument(tag=NEWEST), headers={"ETag": '"new"'})]
    with RegistryClient(BASE, config.state_dir / "registry-cache") as c:
        c.packument("t3")
    with RegistryClient(BASE, config.state_dir / "registry-cache") as c:
        resolve(config, state, c, NOW + timedelta(hours=6))
    assert route.calls[1].request.headers["If-None-Match"] == '"old"'
    assert check_root()


# --- the channel --------------------------------------------------------------------------------

def test_a_soaked_newer_nightly_is_the_candidate(mock, client, config, state, check_root):
    serve(mock, tag=SOAKED)
    decision = resolve(config, state, client, NOW)
    assert decision.action == "candidate"
    assert decision.candidate.version == SOAKED and decision.candidate.source == "channel"
    assert decision.candidate.published_at == NOW - timedelta(days=2)
    assert decision.candidate.dist.integrity == INTEGRITY
    assert check_root()


def test_tag_moving_backwards_is_refused_not_followed(mock, client, config, state, check_root):
    serve(mock, tag=OLDER)
    decision = resolve(config, state, client, NOW)
    assert decision.action == "refused" and decision.candidate is None
    assert "backwards" in decision.reason and OLDER in decision.reason and CURRENT in decision.reason
    assert check_root()


def test_a_preview_version_on_the_tag_is_refused(mock, client, config, state, check_root):
    serve(mock, tag=PREVIEW)
    decision = resolve(config, state, client, NOW)
    assert decision.action == "refused" and "preview" in decision.reason
    assert check_root()


def test_a_stable_version_on_the_tag_is_refused(mock, client, config, state, check_root):
    serve(mock, tag="0.0.44")
    decision = resolve(config, state, client, NOW)
    assert decision.action == "refused" and "stable" in decision.reason
    assert check_root()


def test_a_tag_that_is_not_semver_is_refused_before_it_reaches_anything(mock, client, config, state, check_root):
    serve(mock, tag="latest; rm -rf /")
    decision = resolve(config, state, client, NOW)
    assert decision.action == "refused" and "not a SemVer version" in decision.reason
    assert check_root()


def test_tag_pointing_at_a_version_missing_from_the_packument_is_an_environment_fault(mock, client, config,
                                                                                       state, check_root):
    serve(mock, tag=NEWEST, doc=packument(tag=NEWEST, versions=[CURRENT, SOAKED]))
    with pytest.raises(EnvironmentFault, match="does not list"):
        resolve(config, state, client, NOW)
    assert check_root()


def test_a_missing_channel_tag_is_an_environment_fault(mock, client, config, state, check_root):
    mock.get(TAGS).respond(json={"latest": "0.0.42"})
    with pytest.raises(EnvironmentFault, match="no 'nightly' dist-tag"):
        resolve(config, state, client, NOW)
    assert check_root()


@pytest.mark.parametrize("fault", [httpx.Response(500), httpx.Response(404), httpx.ConnectTimeout("slow")])
def test_a_registry_fault_is_an_environment_fault_and_leaves_root_untouched(mock, client, config, state,
                                                                             check_root, fault):
    mock.get(TAGS).mock(side_effect=fault if isinstance(fault, Exception) else [fault] * 4)
    with pytest.raises(EnvironmentFault):
        resolve(config, state, client, NOW)
    assert check_root()


def test_a_denied_tag_version_is_a_noop_with_the_denial(mock, client, config, state, check_root):
    state.denied.append(Denial(version=SOAKED, reason="broke pairing", gate="pairing-probe", at=NOW))
    serve(mock, tag=SOAKED)
    decision = resolve(config, state, client, NOW)
    assert decision.action == "noop" and "denied" in decision.reason and "broke pairing" in decision.reason
    assert check_root()


def test_too_young_chooses_the_newest_older_soaked_nightly(mock, client, config, state, check_root):
    serve(mock, tag=NEWEST)
    decision = resolve(config, state, client, NOW)
    assert decision.action == "candidate"
    assert decision.candidate.version == SOAKED and decision.candidate.source == "soaked"
    assert any(NEWEST in note and "published 1h ago" in note for note in decision.notes)
    assert check_root()


def test_too_young_and_nothing_soaked_is_a_noop_with_the_reason(mock, client, config, state, check_root):
    serve(mock, tag=NEWEST, doc=packument(tag=NEWEST, versions=[CURRENT, NEWEST]))
    decision = resolve(config, state, client, NOW)
    assert decision.action == "noop" and decision.candidate is None
    assert "under min_release_age 6h" in decision.reason and NEWEST in decision.reason
    assert check_root()


def test_a_version_first_seen_here_recently_is_too_young_whatever_the_registry_says(mock, client, config,
                                                                                       check_root):
    state = State(current=CURRENT)  # a fresh host: it has seen nothing before tonight
    serve(mock, tag=SOAKED)
    decision = resolve(config, state, client, NOW)
    assert decision.action == "noop" and "first seen here 0s ago" in decision.reason
    assert state.first_seen[SOAKED] == NOW
    assert check_root()


def test_the_soaked_fallback_skips_denied_versions(mock, client, config, state, check_root):
    state.denied.append(Denial(version=SOAKED, reason="crashed", gate="sandbox-serve", at=NOW))
    serve(mock, tag=NEWEST)
    decision = resolve(config, state, client, NOW)
    assert decision.action == "noop"
    assert any(SOAKED in note and "denied" in note for note in decision.notes)
    assert check_root()


def test_the_soaked_fallback_never_goes_below_current(mock, client, config, state, check_root):
    serve(mock, tag=NEWEST, doc=packument(tag=NEWEST, versions=[OLDER, CURRENT, NEWEST]))
    decision = resolve(config, state, client, NOW)
    assert decision.action == "noop" and decision.candidate is None
    assert check_root()


def test_without_registry_times_the_first_seen_time_decides(mock, client, config, state, check_root):
    serve(mock, tag=NEWEST, doc=packument(tag=NEWEST, with_time=False))
    decision = resolve(config, state, client, NOW)
    assert decision.candidate.version == NEWEST and decision.candidate.published_at is None
    assert check_root()


def test_first_seen_times_are_recorded_for_new_nightlies_and_forgotten_below_current(mock, client, config,
                                                                                       check_root):
    state = State(current=CURRENT, first_seen={OLDER: NOW - timedelta(days=30)})
    serve(mock, tag=NEWEST)
    resolve(config, state, client, NOW)
    assert state.first_seen == {SOAKED: NOW, NEWEST: NOW}
    assert check_root()


def test_a_fresh_host_without_current_takes_the_soaked_tag(mock, client, config, check_root):
    state = State(first_seen={SOAKED: NOW - timedelta(days=1)})
    serve(mock, tag=SOAKED)
    decision = resolve(config, state, client, NOW)
    assert decision.candidate.version == SOAKED
    assert check_root()


# --- freeze and pin -----------------------------------------------------------------------------

def test_frozen_is_a_noop_without_any_request(mock, client, config, state, check_root):
    state.frozen = Freeze(reason="holiday week", by="ops", at=NOW - timedelta(days=1), until=NOW + timedelta(days=2))
    serve(mock)
    decision = resolve(config, state, client, NOW)
    assert decision.action == "noop" and "holiday week" in decision.reason and "until" in decision.reason
    assert mock.calls.call_count == 0
    assert check_root()


def test_an_expired_freeze_no_longer_holds_the_channel(mock, client, config, state, check_root):
    state.frozen = Freeze(reason="holiday week", by="ops", at=NOW - timedelta(days=8), until=NOW - timedelta(hours=1))
    serve(mock, tag=SOAKED)
    decision = resolve(config, state, client, NOW)
    assert decision.candidate.version == SOAKED
    assert any("ended" in note for note in decision.notes)
    assert check_root()


def test_pinned_and_current_is_a_noop_without_any_request(mock, client, config, state, check_root):
    state.pinned = Pin(version=CURRENT, reason="known good", by="ops", at=NOW)
    serve(mock)
    decision = resolve(config, state, client, NOW)
    assert decision.action == "noop" and "pinned" in decision.reason
    assert mock.calls.call_count == 0
    assert check_root()


def test_a_pin_that_is_not_current_is_the_candidate_whatever_the_tag(mock, client, config, state, check_root):
    state.pinned = Pin(version=OLDER, reason="roll back to the 19th", by="ops", at=NOW)
    serve(mock, tag=NEWEST)
    decision = resolve(config, state, client, NOW)
    assert decision.action == "candidate"
    assert decision.candidate.version == OLDER and decision.candidate.source == "pin"
    assert "roll back to the 19th" in decision.candidate.reason
    assert all(call.request.url.path != TAGS for call in mock.calls)
    assert check_root()


def test_a_pin_missing_from_the_registry_is_refused(mock, client, config, state, check_root):
    state.pinned = Pin(version="0.0.40-nightly.20261001.1", reason="x", by="ops", at=NOW)
    serve(mock)
    decision = resolve(config, state, client, NOW)
    assert decision.action == "refused" and "not in the registry" in decision.reason
    assert check_root()


def test_a_denied_pin_is_refused(mock, client, config, state, check_root):
    state.pinned = Pin(version=SOAKED, reason="x", by="ops", at=NOW)
    state.denied.append(Denial(version=SOAKED, reason="crashed", at=NOW))
    serve(mock)
    decision = resolve(config, state, client, NOW)
    assert decision.action == "refused" and "denied" in decision.reason
    assert check_root()


# --- automatic denial ---------------------------------------------------------------------------

def test_failures_below_the_limit_are_counted_not_denied():
    state = State()
    assert record_failure(state, SOAKED, "sandbox-serve", "crashed", None, max_failures=3) is False
    assert record_failure(state, SOAKED, "sandbox-serve", "crashed", None, max_failures=3) is False
    assert state.failures[SOAKED] == 2 and state.denied == []


def test_the_kth_failure_denies_the_version_with_gate_and_reason():
    state = State(failures={SOAKED: 2})
    assert record_failure(state, SOAKED, "pairing-probe", "cookie missing", "evidence/run-7", max_failures=3)
    denial = state.denial(SOAKED)
    assert denial.gate == "pairing-probe" and "cookie missing" in denial.reason
    assert denial.evidence == "evidence/run-7" and denial.by == "t3track"


def test_a_no_change_night_against_a_registry_process_makes_one_request(tmp_path, config, state):
    from tests.support.registry_server import make_package_tarball, serve

    with serve() as server:
        server.publish("t3", CURRENT, make_package_tarball("t3", CURRENT), tag="nightly",
                       published_at=NOW - timedelta(days=7))
        with RegistryClient(server.url, config.state_dir / "registry-cache") as c:
            decision = resolve(config, state, c, NOW)
        paths = [r.path for r in server.requests]
    assert decision.action == "noop"
    assert paths == [TAGS]


def test_a_tag_moved_back_but_still_newer_than_current_is_followed_and_noted(mock, config, state, check_root):
    mock.get(TAGS).respond(json={"nightly": SOAKED})
    mock.get("/t3").side_effect = [httpx.Response(200, json=packument(tag=NEWEST)),
                                   httpx.Response(200, json=packument(tag=SOAKED))]
    with RegistryClient(BASE, config.state_dir / "registry-cache") as c:
        c.packument("t3")
    with RegistryClient(BASE, config.state_dir / "registry-cache") as c:
        decision = resolve(config, state, c, NOW)
    assert decision.candidate.version == SOAKED and decision.candidate.source == "channel"
    assert any(f"moved back from {NEWEST} to {SOAKED}" in note for note in decision.notes)
    assert check_root()


# --- `run --to VERSION`: exactly one version, whatever the channel says ---------------------------

from t3track.night.policy import resolve_exact  # noqa: E402


def test_to_takes_an_older_nightly_than_the_tag_and_skips_the_soak(mock, client, config, state):
    serve(mock, tag=NEWEST)
    state.first_seen = {}  # never seen here: the channel policy would make it wait
    decision = resolve_exact(config, state, client, SOAKED, NOW)
    assert decision.action == "candidate"
    assert decision.candidate.version == SOAKED and decision.candidate.source == "exact"
    assert decision.candidate.dist.integrity == INTEGRITY
    assert TAGS not in [call.request.url.path for call in mock.calls]  # the tag is not asked


def test_to_a_denied_version_is_refused(mock, client, config, state):
    serve(mock)
    state.denied = [Denial(version=SOAKED, reason="canary rolled back", at=NOW, by="ops")]
    decision = resolve_exact(config, state, client, SOAKED, NOW)
    assert decision.action == "refused" and "denied" in decision.reason and "canary" in decision.reason


def test_to_an_older_version_is_refused_unless_downgrades_are_allowed(mock, client, config, state):
    serve(mock)
    refused = resolve_exact(config, state, client, OLDER, NOW)
    assert refused.action == "refused" and "--allow-downgrade" in refused.reason
    allowed = resolve_exact(config, state, client, OLDER, NOW, allow_downgrade=True)
    assert allowed.action == "candidate" and allowed.candidate.version == OLDER
    assert "downgrade" in allowed.reason


def test_to_the_current_version_is_nothing_to_do(mock, client, config, state):
    decision = resolve_exact(config, state, client, CURRENT, NOW)
    assert decision.action == "noop" and "already current" in decision.reason
    assert not mock.calls


def test_to_on_a_frozen_host_takes_nothing(mock, client, config, state):
    state.frozen = Freeze(reason="exam week", by="ops", at=NOW - timedelta(hours=1))
    decision = resolve_exact(config, state, client, NEWEST, NOW)
    assert decision.action == "noop" and "exam week" in decision.reason and not mock.calls


def test_to_another_version_than_the_pin_is_refused(mock, client, config, state):
    state.pinned = Pin(version=SOAKED, reason="hold", by="ops", at=NOW)
    decision = resolve_exact(config, state, client, NEWEST, NOW)
    assert decision.action == "refused" and "unpin" in decision.reason
    serve(mock)
    assert resolve_exact(config, state, client, SOAKED, NOW).action == "candidate"


def test_to_a_version_the_registry_does_not_have_is_refused(mock, client, config, state):
    serve(mock)
    decision = resolve_exact(config, state, client, "0.0.43-nightly.20261128.3000", NOW)
    assert decision.action == "refused" and "not in the registry" in decision.reason


def test_to_a_malformed_version_is_a_usage_error(client, config, state):
    from t3track.errors import UsageError

    with pytest.raises(UsageError):
        resolve_exact(config, state, client, "latest", NOW)


def test_a_0_1_nightly_after_a_0_0_46_host_is_the_candidate(mock, client, config, state):
    """The line moved from 0.0.x to 0.1.x (t3code-contract.md, "T3 Code 0.1.x"): the channel is followed across."""
    new = "0.1.11-nightly.20261117.4825"
    times = {CURRENT: NOW - timedelta(days=7), "0.1.5": NOW - timedelta(days=5), new: NOW - timedelta(days=1)}
    serve(mock, tag=new, doc=packument(times=times, tag=new))
    state.first_seen[new] = NOW - timedelta(days=1)
    decision = resolve(config, state, client, NOW)
    assert decision.candidate is not None and decision.candidate.version == new
