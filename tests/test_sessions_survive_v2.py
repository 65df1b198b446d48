"""sessions-survive in the era of 30-day sessions without renewal (upstream issue 13055): the check
pairs with the current version on the sandbox copy just before starting the candidate, so its verdict
is about the upgrade, never about how old the users' own sessions are."""

from __future__ import annotations

import json
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from tests.support.host import nightly

pytestmark = pytest.mark.slow


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def add_old_session(db, age: timedelta) -> None:
    """A session the user paired `age` ago: it expires 30 days after pairing."""
    issued = datetime.now(UTC) - age
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO auth_sessions (session_id, subject, scopes, method, issued_at, expires_at)"
                     " VALUES (?, 'one-time-token', '[]', 'browser-session-cookie', ?, ?)",
                     (str(uuid.uuid4()), iso(issued), iso(issued + timedelta(days=30))))


def test_sessions_survive_pairs_just_before_the_upgrade_so_old_sessions_do_not_decide(host):
    for user in host.users:
        add_old_session(user.db, timedelta(days=29, hours=23))     # expires within the hour
    assert host.t3track("backup").returncode == 0
    host.write_config(gates={**host.config_dict()["gates"], "sessions_survive": True})
    # the candidate's clock runs a day ahead: every session of the users' own has expired for it
    host.publish(nightly(1), migrations=53, clock_offset_s=86400)
    result = host.t3track("dry-run", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    survive = [g for g in json.loads(result.stdout)["gates"] if g["name"] == "sessions-survive"]
    assert [(g["user"], g["outcome"]) for g in survive] == [("alice", "pass"), ("bob", "pass")]
    assert "paired with the current version just before the upgrade" in survive[0]["detail"]
