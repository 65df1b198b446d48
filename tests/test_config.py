from datetime import timedelta

import pytest

from t3track.config import load_config, parse_config, parse_duration
from t3track.errors import ConfigError


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("15m", 900), ("6h", 21600), ("7d", 604800), (30, 30)])
def test_durations(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("bad", ["6y", "h", "-5m", True, 1.5, "6 hours"])
def test_bad_durations_are_refused(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_every_problem_is_listed_with_its_path():
    with pytest.raises(ConfigError) as info:
        parse_config({
            "users": [{"name": "alice", "base_dir": "/a", "port": 3773},
                      {"name": "bob", "base_dir": "/b", "port": "x"}],
            "bogus": 1,
            "min_release_age": "6y",
            "gates": {"order": ["nope"]},
        })
    problems = info.value.problems
    assert "users[1].port: must be an integer" in problems
    assert "bogus: unknown key" in problems
    assert any(p.startswith("min_release_age: must be a duration") for p in problems)
    assert any(p.startswith("gates.order: unknown gate(s) nope") for p in problems)
    assert len(problems) == 4
    assert info.value.exit_code == 2


def test_preview_channel_is_refused():
    with pytest.raises(ConfigError) as info:
        parse_config({"channel": "preview"})
    assert info.value.problems == ["channel: the preview channel is never tracked; use nightly"]


def test_front_door_must_be_loopback():
    with pytest.raises(ConfigError) as info:
        parse_config({"users": [{"name": "a", "base_dir": "/a", "port": 1, "front_door": "http://10.0.0.1/"}]})
    assert info.value.problems[0].startswith("users[0].front_door:")


def test_duplicate_ports_are_refused():
    with pytest.raises(ConfigError):
        parse_config({"users": [{"name": "a", "base_dir": "/a", "port": 1}, {"name": "b", "base_dir": "/b", "port": 1}]})


def test_config_file_is_found_through_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text("package: t3\nkeep_versions: 5\n")
    monkeypatch.setenv("T3TRACK_CONFIG", str(path))
    assert load_config().keep_versions == 5


def test_explicit_path_wins_over_the_environment(tmp_path, monkeypatch):
    (tmp_path / "env.yaml").write_text("keep_versions: 5\n")
    (tmp_path / "cli.yaml").write_text("keep_versions: 7\n")
    monkeypatch.setenv("T3TRACK_CONFIG", str(tmp_path / "env.yaml"))
    assert load_config(tmp_path / "cli.yaml").keep_versions == 7


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("users:\n  - name: a\n   port: [\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "line" in info.value.message and "is not valid YAML" in info.value.message


def test_missing_file_says_where_it_looked(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.yaml")
    assert str(tmp_path / "absent.yaml") in info.value.message


def test_gates_parallel_defaults_to_the_cpus_this_process_may_use():
    import os

    assert parse_config({}).gates.parallel == len(os.sched_getaffinity(0))
    assert parse_config({"gates": {"parallel": 1}}).gates.parallel == 1


@pytest.mark.parametrize(("value", "problem"), [
    (0, "gates.parallel: must be at least 1"),
    (-2, "gates.parallel: must be at least 1"),
    (True, "gates.parallel: must be an integer"),
    ("four", "gates.parallel: must be an integer"),
    (1.5, "gates.parallel: must be an integer"),
])
def test_gates_parallel_must_be_a_whole_number_of_at_least_one(value, problem):
    with pytest.raises(ConfigError) as info:
        parse_config({"gates": {"parallel": value}})
    assert info.value.problems == [problem]


def test_a_file_is_read_with_the_models_lax_types_and_their_messages(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("users:\n  - {name: alice, base_dir: /a, port: '3773'}\n")  # valid, not canonical
    assert load_config(path).users[0].port == 3773
    path.write_text("users:\n  - {name: alice, base_dir: /a, port: 0}\nbogus: 1\n")
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert refused.value.problems == ["users[0].port: must be at least 1", "bogus: unknown key"]
