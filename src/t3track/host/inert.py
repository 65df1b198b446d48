"""What makes a sandbox copy inert before a candidate is started on it (t3code-contract.md, "Agents,
and what a copy can do").

A T3 Code server acts on the world at boot: it starts the user's provider CLIs with the user's
logins, resumes interrupted agent turns in the threads' real project directories, git-pulls projects,
re-links the user's T3 Connect environment to itself (and deletes the user's tunnel on stop), and
V2-era builds run scheduled tasks and replay the effect outbox. A rehearsal must do none of that, so
the copy (ours, never the live tree) gets every switch the contract lists turned off: in
settings.json (top level and per project), in the rows of whichever databases the copy holds, and by
not carrying `secrets/cloud-*`. Only what is there is changed, and only to "off": a key of another
type is left as it is (a build that cannot decode its settings falls back to its defaults, which
upstream's docs say have continuation on). The kernel enforces the rest (t3track.host.confine).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from t3track.host.t3db import DATABASES

# Providers the contract names; any other under `providers` is switched off too.
KNOWN_PROVIDERS = ("codex", "claudeAgent", "cursor", "grok", "opencode")
OFF_AT_TOP = ("continueThreadsAfterServerUpdate", "autoResumeLimitedThreads", "defaultAutoPull",
              "enableProviderUpdateChecks")
OFF_PER_PROJECT = ("continueThreadsAfterServerUpdate", "autoPull", "defaultAutoPull", "autoResumeLimitedThreads")
OTLP_URLS = ("otlpTracesUrl", "otlpMetricsUrl")
CLOUD_SECRET_PREFIX = "cloud-"  # T3 Connect: link, OAuth token, relay, endpoint config, link key pair
CONTINUATION_MARKER = "continueAfterServerUpdate"


def carried_secret(name: str) -> bool:
    """Whether a file of `secrets/` goes into the copy: not T3 Connect's (a server holding them
    re-links the user's environment to itself); `server-signing-key.bin` does (sessions survive)."""
    return not name.startswith(CLOUD_SECRET_PREFIX)


def _off(doc: dict[str, Any], key: str) -> bool:
    """`doc[key] = False` unless it holds something other than a boolean. True when it was not off."""
    value = doc.get(key)
    if value is False:
        return False
    if value is None or isinstance(value, bool):
        doc[key] = False
        return True
    return False


def _disable_all(container: Any, *, add: tuple[str, ...] = ()) -> None:
    """`enabled: false` on every entry of a map (or list) of objects, and on `add` entries made for it."""
    entries = container.values() if isinstance(container, dict) else container if isinstance(container, list) else ()
    for entry in entries:
        if isinstance(entry, dict):
            _off(entry, "enabled")
    if isinstance(container, dict):
        for name in add:
            container.setdefault(name, {})
            if isinstance(container[name], dict):
                _off(container[name], "enabled")


def _every_enabled_off(node: Any) -> None:
    if isinstance(node, dict):
        if "enabled" in node:
            _off(node, "enabled")
        for value in node.values():
            _every_enabled_off(value)
    elif isinstance(node, list):
        for value in node:
            _every_enabled_off(value)


def inert_settings(raw: bytes | None) -> tuple[bytes, str | None]:
    """The user's settings.json with everything that acts on the world off, and a note when the
    user's file could not be used (absent files get an inert one: defaults may be on)."""
    note = None
    try:
        doc = json.loads(raw) if raw else {}
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        note = "settings.json is not a JSON object: the copy gets an inert one"
        doc = {}
    for key in OFF_AT_TOP:
        _off(doc, key)
    if not isinstance(doc.get("providers"), dict):
        doc["providers"] = {} if doc.get("providers") is None else doc["providers"]
    _disable_all(doc["providers"], add=KNOWN_PROVIDERS)
    _disable_all(doc.get("providerInstances"))
    overrides = doc.get("projectSettingsOverrides")
    if isinstance(overrides, dict):
        for project in overrides.values():
            if isinstance(project, dict):
                for key in OFF_PER_PROJECT:
                    _off(project, key)
    if isinstance(doc.get("projectAutoPullOverrides"), dict):
        doc["projectAutoPullOverrides"] = {}
    cleanup = doc.get("storageCleanup")
    if isinstance(cleanup, dict):
        _off(cleanup, "enabled")
        _every_enabled_off(cleanup)
    observability = doc.get("observability")
    if isinstance(observability, dict):
        for key in OTLP_URLS:
            if key in observability and (observability[key] is None or isinstance(observability[key], str)):
                observability[key] = ""
    return (json.dumps(doc, indent=2) + "\n").encode(), note


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')}


# (table, needed columns, statement, what it switched off)
_ROW_SWITCHES = (
    ("provider_session_runtime", {"runtime_payload_json"},
     f"UPDATE provider_session_runtime SET runtime_payload_json = json_remove(runtime_payload_json, "
     f"'$.{CONTINUATION_MARKER}') WHERE json_valid(runtime_payload_json) "
     f"AND json_type(runtime_payload_json, '$.{CONTINUATION_MARKER}') IS NOT NULL",
     "continuation markers"),
    ("projection_projects", {"auto_pull"},
     "UPDATE projection_projects SET auto_pull = 0 WHERE auto_pull IS NOT 0", "project auto-pulls"),
    ("scheduled_tasks", {"enabled"},
     "UPDATE scheduled_tasks SET enabled = 0 WHERE enabled IS NOT 0", "scheduled tasks"),
    ("orchestration_v2_effect_outbox", {"status"},
     "UPDATE orchestration_v2_effect_outbox SET status = 'cancelled' WHERE status IN ('pending', 'running')",
     "queued effects"),
)


def inert_databases(userdata: Path) -> list[str]:
    """Switch off, in each database the copy holds, the rows that make a server act at boot (only
    where the table and column exist: 0.0.42 has no scheduled tasks). What was changed, as notes."""
    notes = []
    for name in DATABASES:
        path = userdata / name
        if not path.is_file() or path.is_symlink():
            continue
        conn = sqlite3.connect(path, timeout=5.0, isolation_level=None)
        try:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            changed = []
            conn.execute("BEGIN IMMEDIATE")
            for table, needed, statement, what in _ROW_SWITCHES:
                if table in tables and needed <= _columns(conn, table):
                    count = conn.execute(statement).rowcount
                    if count:
                        changed.append(f"{count} {what}")
            conn.execute("COMMIT")
        finally:
            conn.close()
        if changed:
            notes.append(f"{name}: off " + ", ".join(changed))
    return notes
