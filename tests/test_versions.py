import pytest

from t3track import versions
from t3track.errors import UsageError


@pytest.mark.parametrize("text", ["0.0.27-nightly.20260616.1", "0.0.46-nightly.20261005.2689",
                                  "0.1.11-nightly.20261117.4825"])
def test_nightly_versions_parse_as_semver_and_are_nightly(text):
    assert versions.is_valid(text)
    assert versions.channel_of(text) is versions.Channel.NIGHTLY


def test_preview_stable_and_other_channels():
    assert versions.channel_of("0.0.30-preview.20260801.900") is versions.Channel.PREVIEW
    assert versions.channel_of("0.0.42") is versions.Channel.STABLE
    assert versions.channel_of("1.0.0-rc.1") is versions.Channel.OTHER


def test_semver_precedence_orders_nightlies_like_npm():
    ordered = ["0.0.46-nightly.20261005.2689", "0.0.46", "0.0.47-nightly.20261006.2690",
               "0.0.47-nightly.20261006.2700", "0.0.47"]
    assert sorted(reversed(ordered), key=versions.sort_key) == ordered
    assert versions.newer("0.0.46", "0.0.46-nightly.20261005.2689")
    assert not versions.newer("0.0.46-nightly.20261005.2689", "0.0.46")


def test_the_0_1_line_orders_after_0_0_46_stables_and_nightlies_alike():
    """t3code-contract.md, "T3 Code 0.1.x": after 0.0.46 the line moved to 0.1.N (stable 0.1.5 to 0.1.11,
    nightlies like 0.1.11-nightly.20261117.4825)."""
    ordered = ["0.0.46-nightly.20261010.2922", "0.0.46", "0.1.5", "0.1.11-nightly.20261117.4825",
               "0.1.11-nightly.20261118.4875", "0.1.11", "0.1.12-nightly.20261122.5001"]
    assert sorted(reversed(ordered), key=versions.sort_key) == ordered
    assert versions.channel_of("0.1.11") is versions.Channel.STABLE
    assert versions.is_nightly("0.1.12-nightly.20261122.5001") and not versions.is_nightly("0.1.5")


@pytest.mark.parametrize("bad", ["1.0; rm -rf /", "latest", "v1", "1.0", "^1.0.0", " 1.0.0", ""])
def test_operator_typed_invalid_versions_are_refused_with_usage_error(bad):
    with pytest.raises(UsageError) as info:
        versions.require_valid(bad)
    assert info.value.exit_code == 2
