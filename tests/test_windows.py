"""Swap windows and blackout days (t3track.night.windows), on an injected clock and time zone."""

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from t3track.config import ConfigError, WhenConfig, parse_config
from t3track.night.windows import verdict

BERLIN = ZoneInfo("Europe/Berlin")


def when(**data) -> WhenConfig:
    return WhenConfig.model_validate(data)


def at(text: str, tz=BERLIN) -> datetime:
    """A local wall time in `tz` as an aware moment (2026-12-07 is a Monday)."""
    return datetime.fromisoformat(text).replace(tzinfo=tz)


def test_without_windows_or_blackout_a_night_may_always_swap():
    assert verdict(when(), at("2026-12-07T13:00")).open


def test_inside_a_weekday_window_the_swap_may_start():
    found = verdict(when(windows=["Mon-Fri 02:00-05:00"]), at("2026-12-07T03:10"), BERLIN)
    assert found.open and found.window == "Mon-Fri 02:00-05:00"


def test_outside_every_window_the_reason_names_the_windows_and_the_next_opening():
    found = verdict(when(windows=["Mon-Fri 02:00-05:00", "Sat 22:00-02:00"]), at("2026-12-07T05:00"), BERLIN)
    assert not found.open
    assert "Mon 05:00 is outside every swap window (Mon-Fri 02:00-05:00, Sat 22:00-02:00)" in found.reason
    assert found.next_open == at("2026-12-08T02:00") and found.window == "Mon-Fri 02:00-05:00"
    assert "Tue 2026-12-08 02:00 +0100" in found.reason


def test_a_window_across_midnight_is_open_after_midnight_on_the_next_day():
    windows = when(windows=["Sat 22:00-02:00"])
    assert verdict(windows, at("2026-12-12T23:30"), BERLIN).open        # Saturday night
    assert verdict(windows, at("2026-12-13T01:59"), BERLIN).open        # Sunday, before it closes
    closed = verdict(windows, at("2026-12-13T02:00"), BERLIN)
    assert not closed.open and closed.next_open == at("2026-12-19T22:00")
    assert not verdict(windows, at("2026-12-12T01:00"), BERLIN).open    # Saturday early: Friday opened none


def test_friday_to_monday_goes_round_the_weekend():
    windows = when(windows=["Fri-Mon 01:00-02:00"])
    for day in ("11", "12", "13", "14"):
        assert verdict(windows, at(f"2026-12-{day}T01:30"), BERLIN).open
    assert not verdict(windows, at("2026-12-15T01:30"), BERLIN).open


def test_a_blackout_range_holds_every_day_in_it_and_the_next_window_is_after_it():
    rules = when(windows=["02:00-05:00"], blackout=["2026-12-24..2027-01-02"])
    found = verdict(rules, at("2026-12-31T03:00"), BERLIN)
    assert not found.open and found.blackout == "2026-12-24..2027-01-02"
    assert "2026-12-31 is a blackout day (2026-12-24..2027-01-02)" in found.reason
    assert found.next_open == at("2027-01-03T02:00")
    assert verdict(rules, at("2027-01-03T02:30"), BERLIN).open


def test_a_blackout_without_windows_holds_only_its_days():
    rules = when(blackout=["2027-03-31"])
    assert not verdict(rules, at("2027-03-31T12:00"), BERLIN).open
    assert verdict(rules, at("2027-03-31T12:00"), BERLIN).next_open == at("2027-04-01T00:00")
    assert verdict(rules, at("2027-04-01T00:00"), BERLIN).open


def test_windows_are_local_time_whatever_the_utc_offset_of_the_night():
    rules = when(windows=["Mon-Fri 02:00-05:00"])
    # 2026-07-06 01:30 UTC is 03:30 in Berlin (summer time): inside; the same UTC time in UTC is not
    moment = datetime(2026, 7, 6, 1, 30, tzinfo=UTC)
    assert verdict(rules, moment, BERLIN).open
    assert not verdict(rules, moment, UTC).open


def test_daylight_saving_change_keeps_the_next_opening_at_local_wall_time():
    rules = when(windows=["Sun 02:30-04:00"])
    # Berlin leaves summer time on 2026-10-25: the window still opens at 02:30 local, +0100 or +0200
    found = verdict(rules, at("2026-10-24T12:00"), BERLIN)
    assert found.next_open is not None
    assert found.next_open.astimezone(BERLIN).strftime("%a %H:%M") == "Sun 02:30"


@pytest.mark.parametrize(("windows", "blackout", "expected"), [
    (["Mon-Fri 02:00-02:00"], [], "when.windows[0]: 'Mon-Fri 02:00-02:00' opens and closes at the same time"),
    (["Someday 01:00-02:00"], [], "when.windows[0]: 'Someday' is not a day or a range of days"),
    (["Mon 25:00-01:00"], [], "when.windows[0]: '25:00' is not a time of day"),
    (["at night"], [], "when.windows[0]: must be a window such as 'Mon-Fri 02:00-05:00'"),
    ([], ["2027-01-02..2026-12-24"], "when.blackout[0]: '2027-01-02..2026-12-24': a range goes from its first day"),
    ([], ["christmas"], "when.blackout[0]: 'christmas' is not a date"),
])
def test_a_bad_window_or_blackout_is_reported_with_its_path(windows, blackout, expected):
    with pytest.raises(ConfigError) as caught:
        parse_config({"when": {"windows": windows, "blackout": blackout}})
    assert any(problem.startswith(expected) for problem in caught.value.problems), caught.value.problems


def test_hooks_and_approval_are_checked_with_their_paths():
    with pytest.raises(ConfigError) as caught:
        parse_config({"when": {"approval": "sometimes", "approval_max_age": "soon"},
                      "hooks": {"pre_swap": ["tell", "{version}"], "timeout": "x"}})
    problems = caught.value.problems
    assert any(p.startswith("when.approval: ") for p in problems)
    assert any(p.startswith("when.approval_max_age: must be a duration") for p in problems)
    assert any(p.startswith("hooks.pre_swap: '{version}' names {version}, which is not a placeholder") for p in problems)
    assert any(p.startswith("hooks.timeout: ") for p in problems)


def test_an_unquoted_yaml_date_is_a_one_day_blackout():
    import yaml

    config = parse_config(yaml.safe_load("when:\n  blackout: [2027-03-31]\n"))
    assert str(config.when.blackout[0]) == "2027-03-31"


def test_the_commented_when_and_hooks_of_the_example_config_are_valid():
    import re
    from pathlib import Path

    import yaml

    text = (Path(__file__).parents[1] / "systemd" / "config.example.yaml").read_text()
    block = text[text.index("# when:"):]
    uncommented = "\n".join(re.sub(r"^# ?", "", line) for line in block.splitlines() if line.startswith("#"))
    config = parse_config(yaml.safe_load(uncommented))
    assert config.when.windows and config.when.blackout and config.when.approval == "manual"
    assert config.hooks.pre_swap and config.hooks.post_swap and config.hooks.post_rollback
