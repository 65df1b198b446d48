"""t3track.fastread (status's config and state.json without pydantic) never accepts what the models
refuse, and gives what they give: every field of a full document swapped, one at a time, for values
of every odd kind, removed, or joined by an unknown key."""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from t3track import fastread
from t3track.config import Config
from t3track.errors import ConfigError, StateError
from t3track.state import State, StateStore

ODD = [None, True, False, 0, 1, -1, 65535, 65536, 1.5, "", "x", "3773", "7d", "0s", "99999d", "64KiB", "65GiB", "/abs",
       "rel/../x", "/m/x.prom", "http://127.0.0.1:1/", "https://example.com", "preview", "@s/p", [], ["a"],
       ["{nokey}"], ["backup-present", "backup-present"], ["pairing-probe"], {}, {"x": 1},
       "2026-11-27T03:00:00Z", "2026-11-27T03:00:00+02:00", "2026-11-27 03:00:00", "9999-12-31T23:00:00-14:00",
       "0.0.42", "0.0.43-nightly.20261127.3001", "not a version", "alice", "Bad Name"]

FULL_CONFIG: dict[str, Any] = {
    "package": "@scope/t3", "channel": "nightly", "registry": "http://127.0.0.1:4873",
    "registry_limits": {"dist_tags": "64KiB", "packument": 1 << 20, "tarball": "512MiB", "deadline": "2m"},
    "executable": "node_modules/.bin/t3", "root": "/opt/t3", "state_dir": "/var/lib/t3track",
    "backup_dir": "/var/backups/t3track", "keep_versions": 3, "min_release_age": "6h", "install_timeout": 600,
    "ignore_scripts": True,
    "users": [{"name": "alice", "base_dir": "/home/alice/.t3", "port": 3773, "run_as": "alice",
               "front_door": "http://127.0.0.1:8080/"},
              {"name": "bob", "base_dir": "/home/bob/.t3", "port": 3774}],
    "services": {"stop": ["systemctl", "stop", "t3@{user}.service"], "start": ["systemctl", "start", "t3@{user}"],
                 "logs": ["journalctl", "-u", "t3@{user}.service"], "timeout": "60s"},
    "swap": {"busy_wait": "20m"},
    "gates": {"order": ["backup-present", "sandbox-serve", "pairing-probe"], "backup_max_age": "26h",
              "serve_timeout": "60s", "probe_timeout": "10s", "sessions_survive": False, "max_failures": 3},
    "backup": {"timeout": "15m", "keep": 7, "keep_daily_days": 14}, "verify_timeout": "60s",
    "evidence_max_age": "30d", "notify": {"webhook": "https://example.com/hook", "command": ["notify", "{event}"],
                                          "timeout": "10s", "host": "h1"},
    "metrics_path": "/var/lib/node_exporter/t3track.prom", "fingerprint_freeze_after": 2,
}
AT = "2026-11-27T03:00:00Z"
FULL_STATE: dict[str, Any] = {
    "schema_version": 1, "current": "0.0.42", "previous": "0.0.41",
    "pinned": {"version": "0.0.42", "reason": "r", "by": "ops", "at": AT},
    "frozen": {"reason": "r", "by": "ops", "at": AT, "until": "2026-12-01T00:00:00.250000+01:00"},
    "denied": [{"version": "0.0.43-nightly.20261127.3001", "reason": "gate", "gate": "pairing-probe", "at": AT,
                "by": None, "evidence": "/e", "fingerprint": "f"}],
    "first_seen": {"0.0.43-nightly.20261127.3001": AT}, "failures": {"0.0.43-nightly.20261127.3001": 1},
    "last_run": {"at": AT, "outcome": "noop", "candidate": None, "exit_code": 0, "run_id": "x"},
    "current_snapshot": "/s", "held": {}, "some_future_key": "ignored",
}


def plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return plain(dict(value))
    if isinstance(value, SimpleNamespace):
        return plain(vars(value))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix] if prefix else []
    if isinstance(doc, dict):
        for key, value in doc.items():
            found += paths(value, prefix + (key,))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            found += paths(value, prefix + (i,))
    return found


def variants(base: dict[str, Any]) -> list[Any]:
    out: list[Any] = [base, {}, None, [], "x"]
    for path in paths(base):
        for odd in ODD:
            doc = copy.deepcopy(base)
            parent = doc
            for part in path[:-1]:
                parent = parent[part]
            parent[path[-1]] = copy.deepcopy(odd)
            out.append(doc)
        doc = copy.deepcopy(base)
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        if isinstance(parent, dict):
            del parent[path[-1]]
            out.append(doc)
            extra = copy.deepcopy(base)
            target = extra
            for part in path[:-1]:
                target = target[part]
            target["no_such_key"] = 1
            out.append(extra)
    return out


def _model(kind: type, doc: Any) -> Any:
    try:
        return kind.model_validate(doc)
    except ValidationError:
        return None


@pytest.mark.parametrize("base", [FULL_CONFIG, {"users": [{"name": "a", "base_dir": "/a", "port": 1}]}])
def test_the_config_view_accepts_only_what_the_models_accept_and_gives_the_same_values(base):
    accepted = 0
    for doc in variants(base):
        view = fastread.config_view(doc)
        model = _model(Config, {} if doc is None else doc) if isinstance(doc, dict | type(None)) else None
        if view is not None:
            accepted += 1
            assert model is not None, doc
            assert plain(view) == plain(model), doc
    assert fastread.config_view(base) is not None and accepted > 10


@pytest.mark.parametrize("base", [FULL_STATE, {}])
def test_the_state_view_accepts_only_what_the_models_accept_and_gives_the_same_values(base):
    for doc in variants(base):
        view = fastread.state_view(doc)
        if view is not None:
            model = _model(State, doc)
            assert model is not None, doc
            assert plain(view) == plain(model), doc
    assert fastread.state_view(base) is not None


def test_every_field_of_the_models_is_in_the_views():
    view = fastread.config_view(FULL_CONFIG)
    assert plain(view).keys() == dict(Config.model_validate(FULL_CONFIG)).keys()
    assert plain(fastread.state_view(FULL_STATE)).keys() == dict(State.model_validate(FULL_STATE)).keys()


def test_a_file_the_fast_path_doubts_goes_the_models_way_with_their_messages(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("users:\n  - {name: alice, base_dir: /a, port: '3773'}\n")  # valid, not canonical
    assert fastread.load_config(config).users[0].port == 3773
    config.write_text("users:\n  - {name: alice, base_dir: /a, port: 0}\nbogus: 1\n")
    with pytest.raises(ConfigError) as refused:
        fastread.load_config(config)
    assert refused.value.problems == ["users[0].port: must be at least 1", "bogus: unknown key"]
    config.write_text("users: [\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        fastread.load_config(config)
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.json").write_text(json.dumps({"current": "not a version"}))
    with pytest.raises(StateError, match="is corrupt"):
        fastread.state_reader(state).load()
    (state / "state.json").write_text(json.dumps({"current": "0.0.42", "failures": {"0.0.42": "2"}}))
    loaded = fastread.state_reader(state).load()
    assert isinstance(loaded, State) and loaded.failures == {"0.0.42": 2}  # the models' lax reading
    assert fastread.state_reader(Path(tmp_path / "none")).load().current is None
    assert fastread.state_reader(state).journal_path == StateStore(state).journal_path


def test_a_host_with_rings_is_read_by_the_models():
    users = [{"name": "a", "base_dir": "/a", "port": 1}, {"name": "b", "base_dir": "/b", "port": 2}]
    assert fastread.config_view({"users": users, "rings": [{"name": "x", "users": ["a"]},
                                                           {"name": "y", "users": ["b"]}]}) is None
    assert fastread.state_view({"current": "0.0.42", "rings": {"y": {"current": "0.0.41"}}}) is None
    assert fastread.state_view({"current": "0.0.42", "rings": {}}) is not None


def test_yaml_imported_for_status_reads_and_refuses_as_pyyaml_does():
    """fastread.import_yaml defers yaml.reader's NON_PRINTABLE to its first use: in a fresh interpreter
    (here yaml is imported already), the pure and the C loaders still refuse a control character, and
    both read a config as PyYAML imported the usual way does."""
    script = r"""
import json, re, sys
from t3track import fastread
yaml = fastread.import_yaml()
deferred = not isinstance(yaml.reader.Reader.NON_PRINTABLE, re.Pattern)
text = "users:\n  - {name: alice, base_dir: /a, port: 3773}\nkeep_versions: 3\nroot: /opt/t3 # x\n"
loaders = [yaml.SafeLoader] + ([yaml.CSafeLoader] if hasattr(yaml, "CSafeLoader") else [])
read = [yaml.load(text, Loader=loader) for loader in loaders]
refused = []
for loader in loaders:
    try:
        yaml.load("a: \x07\n", Loader=loader)
    except yaml.YAMLError as exc:
        refused.append(str(exc).splitlines()[0])
print(json.dumps({"deferred": deferred, "read": read, "refused": refused,
                  "pattern": yaml.reader.Reader.NON_PRINTABLE.pattern}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    got = json.loads(done.stdout)
    import yaml

    assert got["deferred"]
    assert got["pattern"] == yaml.reader.Reader.NON_PRINTABLE.pattern
    expected = yaml.safe_load("users:\n  - {name: alice, base_dir: /a, port: 3773}\nkeep_versions: 3\nroot: /opt/t3 # x\n")
    assert got["read"] and all(doc == expected for doc in got["read"])
    assert len(got["refused"]) == len(got["read"])
    assert got["refused"][0] == "unacceptable character #x0007: special characters are not allowed"
