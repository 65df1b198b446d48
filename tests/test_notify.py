"""Notifications: a webhook receiver on 127.0.0.1 started by the test, and a notify command."""

import contextlib
import json
import sys
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from t3track.aftermath import notify
from t3track.clock import utcnow
from t3track.config import parse_config
from t3track.errors import ExitCode
from t3track.night import ledger
from t3track.night.report import NightReport
from t3track.results import GateResult, Outcome, new_run_id
from t3track.state import StateStore

V1 = "0.0.43-nightly.20261127.3001"


class Receiver:
    """An HTTP endpoint on loopback for a webhook or any Apprise service that speaks HTTP (json, ntfy,
    gotify): keeps each request as (method, path, raw body), the JSON ones also in `bodies`, and
    answers `status` with `{}`."""

    def __init__(self, status=204):
        self.requests = []
        self.bodies = []
        self.paths = []
        self.status = status
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length).decode(errors="replace")
                receiver.requests.append((self.command, self.path, raw))
                receiver.paths.append(self.path)
                with contextlib.suppress(ValueError):
                    receiver.bodies.append(json.loads(raw))
                body = b"{}"
                self.send_response(receiver.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T0KEN-in-the-path"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def make_config(tmp_path, **notify_cfg):
    return parse_config({"state_dir": str(tmp_path / "state"), "root": str(tmp_path / "root"),
                         "backup_dir": str(tmp_path / "backups"),
                         "users": [{"name": "alice", "base_dir": str(tmp_path / "alice"), "port": 3773}],
                         "notify": {"host": "t3-prod", **notify_cfg}})


def fresh_backup(config, user="alice", age=timedelta(hours=1)):
    created = utcnow() - age
    path = config.backup_dir / user / created.strftime("%Y%m%dT%H%M%SZ")
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"created_at": created.isoformat(), "files": {}}))
    return path


def run_id_now():
    return new_run_id()


def finish(config, report):
    """Record the run as the night does (ledger.record_run), notifications included."""
    store = StateStore(config.state_dir)
    return store, ledger.record_run(config, store, report, event="run", last_run=True)


def refused(run_id=None):
    run_id = run_id or run_id_now()
    gate = GateResult("pairing-probe", "alice", "fail", 1.0, "alice: exchange answered 404 (cookie t3_session=abcdefgh)",
                      fingerprint="pairing-probe:exchange:404:HTTPStatus")
    return NightReport(outcome=Outcome.REFUSED, run_id=run_id, reason="gate pairing-probe failed for alice: exchange 404", candidate=V1, from_version="0.0.42", gates=[gate], evidence=f"/var/lib/t3track/evidence/{run_id}")


def test_a_refused_night_posts_host_outcome_versions_gate_reason_and_evidence(tmp_path, receiver):
    config = make_config(tmp_path, webhook=receiver.url)
    fresh_backup(config)
    report = refused()
    finish(config, report)
    assert len(receiver.bodies) == 1
    body = receiver.bodies[0]
    assert body["host"] == "t3-prod" and body["event"] == "refused" and body["outcome"] == "refused"
    assert body["from"] == "0.0.42" and body["candidate"] == V1 and body["to"] is None
    assert body["gate"] == "pairing-probe" and body["user"] == "alice"
    assert body["reason"] == report.reason
    assert body["evidence"] == report.evidence and body["run_id"] == report.run_id


def test_a_rollback_and_a_critical_run_are_each_notified(tmp_path, receiver):
    config = make_config(tmp_path, webhook=receiver.url)
    fresh_backup(config)
    live = GateResult("live-verify", "alice", "fail", 2.0, "no cookie", fingerprint="live-verify:exchange:200")
    finish(config, NightReport(outcome=Outcome.ROLLED_BACK, run_id=run_id_now(), reason="live check failed for alice", candidate=V1, from_version="0.0.42", to_version="0.0.42", gates=[live]))
    finish(config, NightReport(outcome=Outcome.CRITICAL, run_id=run_id_now(), reason="the rollback failed", candidate=V1, from_version="0.0.42", to_version=None, gates=[live]))
    assert [b["event"] for b in receiver.bodies] == ["rolled_back", "critical"]
    assert receiver.bodies[0]["to"] == "0.0.42" and receiver.bodies[0]["gate"] == "live-verify"


def test_a_no_op_night_and_a_good_swap_send_nothing(tmp_path, receiver):
    config = make_config(tmp_path, webhook=receiver.url)
    fresh_backup(config)
    finish(config, NightReport(outcome=Outcome.NOOP, run_id=run_id_now(), reason="nightly is 0.0.42, which is current"))
    finish(config, NightReport(outcome=Outcome.SWAPPED, run_id=run_id_now(), reason="swapped", candidate=V1, from_version="0.0.42", to_version=V1))
    assert receiver.bodies == []
    assert not [e for e in StateStore(config.state_dir).history() if e["event"] == "notify"]


def test_a_dry_run_is_never_notified(tmp_path, receiver):
    config = make_config(tmp_path, webhook=receiver.url)
    report = refused()
    report.dry_run = True
    finish(config, report)
    assert receiver.bodies == []  # not even the missing backup: a dry run is someone at a terminal


def test_a_failing_webhook_is_a_note_and_a_history_line_never_a_different_exit_code(tmp_path):
    failing = Receiver(status=500)
    try:
        config = make_config(tmp_path, webhook=failing.url)
        fresh_backup(config)
        report = refused()
        store, notes = finish(config, report)
    finally:
        failing.close()
    assert report.exit_code == ExitCode.REFUSED
    assert len(failing.bodies) == 1
    assert any("HTTP 500" in n for n in notes) and any("HTTP 500" in n for n in report.notes)
    event = next(e for e in store.history() if e["event"] == "notify")
    assert event["ok"] is False and event["via"] == "webhook" and event["notify_event"] == "refused"


def test_an_unreachable_webhook_never_raises_and_never_names_the_secret_path(tmp_path, receiver):
    url = receiver.url
    receiver.close()  # nothing listens there any more
    config = make_config(tmp_path, webhook=url, timeout="2s")
    fresh_backup(config)
    report = refused()
    store, notes = finish(config, report)
    assert report.exit_code == ExitCode.REFUSED
    assert len(notes) == 1 and "notification refused via webhook failed" in notes[0]
    assert "T0KEN" not in notes[0] and "T0KEN" not in store.history_path.read_text()


def test_the_notify_command_gets_placeholders_in_argv_and_the_json_on_stdin(tmp_path):
    out = tmp_path / "told.json"
    script = ("import json, sys; json.dump({'argv': sys.argv[1:], 'stdin': json.load(sys.stdin)}, "
              f"open({str(out)!r}, 'w'))")
    config = make_config(tmp_path, command=[sys.executable, "-c", script, "{event}", "--to={candidate}", "{gate}"])
    fresh_backup(config)
    store, notes = finish(config, refused())
    told = json.loads(out.read_text())
    assert told["argv"] == ["refused", f"--to={V1}", "pairing-probe"]
    assert told["stdin"]["event"] == "refused" and told["stdin"]["host"] == "t3-prod"
    assert notes == []
    assert next(e for e in store.history() if e["event"] == "notify")["ok"] is True


def test_a_failing_notify_command_is_a_note(tmp_path):
    config = make_config(tmp_path, command=[sys.executable, "-c", "import sys; sys.exit(3)"])
    fresh_backup(config)
    report = refused()
    _, notes = finish(config, report)
    assert report.exit_code == ExitCode.REFUSED
    assert len(notes) == 1 and "via command failed" in notes[0] and "exited 3" in notes[0]


def test_placeholders_are_replaced_literally_never_formatted():
    argv = notify.command_argv(["{reason.__class__}", "{event}", "{0}"], {"event": "refused", "reason": "x"})
    assert argv == ["{reason.__class__}", "refused", "{0}"]


def test_a_stale_backup_is_notified_once_even_on_a_quiet_night(tmp_path, receiver):
    config = make_config(tmp_path, webhook=receiver.url)
    stale = fresh_backup(config, age=timedelta(hours=30))
    finish(config, NightReport(outcome=Outcome.NOOP, run_id=run_id_now(), reason="nightly is current"))
    finish(config, NightReport(outcome=Outcome.NOOP, run_id=run_id_now(), reason="nightly is current"))
    assert [b["event"] for b in receiver.bodies] == ["backup_stale"]
    body = receiver.bodies[0]
    assert body["user"] == "alice" and body["backup"] == str(stale) and body["backup_age_s"] >= 30 * 3600
    assert "gates.backup_max_age" in body["reason"]


def test_a_stale_backup_is_notified_again_after_a_fresh_one_went_stale_too(tmp_path, receiver):
    config = make_config(tmp_path, webhook=receiver.url)
    fresh_backup(config, age=timedelta(hours=60))
    finish(config, NightReport(outcome=Outcome.NOOP, run_id=run_id_now(), reason="quiet"))
    fresh_backup(config, age=timedelta(hours=27))  # newer, but also too old
    finish(config, NightReport(outcome=Outcome.NOOP, run_id=run_id_now(), reason="quiet"))
    assert [b["event"] for b in receiver.bodies] == ["backup_stale", "backup_stale"]


def test_a_freeze_that_lifted_itself_during_the_run_is_notified(tmp_path, receiver):
    config = make_config(tmp_path, webhook=receiver.url)
    fresh_backup(config)
    store = StateStore(config.state_dir)
    run_id = run_id_now()
    store.record("unfreeze", by="t3track", reason="freeze expired at 2026-11-27T00:00:00Z",
                 frozen_reason="holiday week", automatic=True)
    finish(config, NightReport(outcome=Outcome.NOOP, run_id=run_id, reason="nightly is current"))
    assert [b["event"] for b in receiver.bodies] == ["freeze_expired"]
    assert "holiday week" in receiver.bodies[0]["reason"]


def test_a_freeze_lifted_by_hand_is_not_notified(tmp_path, receiver):
    config = make_config(tmp_path, webhook=receiver.url)
    fresh_backup(config)
    StateStore(config.state_dir).record("unfreeze", by="ops", was_frozen=True)
    finish(config, NightReport(outcome=Outcome.NOOP, run_id=run_id_now(), reason="nightly is current"))
    assert receiver.bodies == []


def test_secrets_in_a_reason_are_redacted_in_the_body(tmp_path, receiver):
    config = make_config(tmp_path, webhook=receiver.url)
    fresh_backup(config)
    report = refused()
    report.reason = "startup said Token: ABCDEFGH2345"
    finish(config, report)
    assert "ABCDEFGH2345" not in json.dumps(receiver.bodies)


def test_no_notify_config_sends_nothing_and_records_nothing(tmp_path):
    config = parse_config({"state_dir": str(tmp_path / "state"), "backup_dir": str(tmp_path / "b")})
    store, notes = finish(config, refused())
    assert notes == [] and not [e for e in store.history() if e["event"] == "notify"]


# ---------------------------------------------------------------- real nights on the emulator host


@pytest.mark.slow
def test_a_refused_night_on_the_host_reaches_the_receiver(host, receiver):
    from tests.support.host import nightly

    host.write_config(notify={"webhook": receiver.url, "host": "emu-host"})
    host.publish(nightly(1), fault="exchange-500")
    result = host.t3track("run", "--json")
    assert result.returncode == 1, result.stderr
    doc = json.loads(result.stdout)
    assert len(receiver.bodies) == 1
    body = receiver.bodies[0]
    assert body["event"] == "refused" and body["host"] == "emu-host" and body["candidate"] == nightly(1)
    assert body["from"] == "0.0.42" and body["gate"] == "pairing-probe" and body["run_id"] == doc["run_id"]
    assert body["evidence"] == doc["evidence"] and (host.state_dir / "evidence" / doc["run_id"]).is_dir()
    assert body["reason"] == doc["reason"]


@pytest.mark.slow
def test_a_rollback_on_the_host_reaches_the_receiver(host, receiver):
    from tests.support.host import nightly

    host.write_config(notify={"webhook": receiver.url})
    host.publish(nightly(1), fault="no-cookie-live")
    assert host.t3track("run").returncode == 1
    assert [b["event"] for b in receiver.bodies] == ["rolled_back"]
    assert receiver.bodies[0]["to"] == "0.0.42" and receiver.bodies[0]["gate"] == "live-verify"


@pytest.mark.slow
def test_a_good_night_and_the_no_op_night_after_it_send_nothing(host, receiver):
    from tests.support.host import nightly

    host.write_config(notify={"webhook": receiver.url})
    host.publish(nightly(1))
    assert host.t3track("run").returncode == 0
    noop = host.t3track("run", "--json")
    assert noop.returncode == 0 and json.loads(noop.stdout)["outcome"] == "noop"
    assert receiver.bodies == []


@pytest.mark.slow
def test_a_failing_webhook_does_not_change_the_exit_code_of_a_run(host):
    from tests.support.host import nightly

    failing = Receiver(status=503)
    try:
        host.write_config(notify={"webhook": failing.url})
        host.publish(nightly(1), fault="exchange-500")
        result = host.t3track("run", "--json")
    finally:
        failing.close()
    assert result.returncode == 1  # refused, as without notifications
    assert len(failing.bodies) == 1
    assert any("HTTP 503" in note for note in json.loads(result.stdout)["notes"])
    told = [e for e in host.history() if e["event"] == "notify"]
    assert told and told[-1]["ok"] is False


# ---------------------------------------------------------------- notifications by URL (Apprise)


@pytest.fixture
def any_receiver():
    r = Receiver(status=200)
    yield r
    r.close()


def test_apprise_urls_reach_json_ntfy_and_gotify_receivers_and_history_names_no_token(tmp_path, any_receiver):
    port = any_receiver.port
    urls = [f"json://127.0.0.1:{port}/hooks/S3CRETjson", f"ntfy://127.0.0.1:{port}/t3-S3CRETtopic",
            f"gotify://127.0.0.1:{port}/AS3CRETgotifyTok"]
    config = make_config(tmp_path, urls=urls)
    fresh_backup(config)
    report = refused()
    store, _ = finish(config, report)
    paths = [path for _, path, _ in any_receiver.requests]
    bodies = [body for _, _, body in any_receiver.requests]
    assert len(any_receiver.requests) == 3, any_receiver.requests
    assert paths[0] == "/hooks/S3CRETjson" and json.loads(bodies[0])["title"] == "t3track on t3-prod: refused"
    assert "/message" in paths[2]                       # Gotify's API
    assert all("gate pairing-probe failed for alice" in body for body in bodies)
    assert all("abcdefgh" not in body for body in bodies)  # the cookie in the gate's detail is redacted
    told = [e for e in store.history() if e["event"] == "notify"]
    assert sorted((e["via"], e["ok"]) for e in told) == [("apprise #1 (json://)", True), ("apprise #2 (ntfy://)", True),
                                                         ("apprise #3 (gotify://)", True)]
    assert "S3CRET" not in (config.state_dir / "history.jsonl").read_text()


def test_an_unreachable_apprise_url_is_a_note_that_never_names_its_token(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]  # nobody listens once the socket is closed
    config = make_config(tmp_path, urls=[f"json://127.0.0.1:{closed}/hooks/S3CRETpath?cto=1&rto=1"])
    fresh_backup(config)
    store, notes = finish(config, refused())
    told = [e for e in store.history() if e["event"] == "notify"]
    assert len(told) == 1 and told[0]["ok"] is False and told[0]["via"] == "apprise #1 (json://)"
    assert any("apprise #1 (json://)" in note for note in notes)
    assert "S3CRET" not in (config.state_dir / "history.jsonl").read_text() + " ".join(notes)


def test_a_config_with_a_bad_apprise_url_or_an_unknown_event_is_refused_without_echoing_the_url(tmp_path):
    from t3track.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        make_config(tmp_path, urls=["not a url with T0KEN"])
    assert "notify.urls" in str(caught.value.problems) and "T0KEN" not in str(caught.value.problems)
    with pytest.raises(ConfigError) as caught:
        make_config(tmp_path, urls=["json://127.0.0.1:1/x"], on=["refused", "sometimes"])
    assert "sometimes" in str(caught.value.problems)


@pytest.mark.slow
def test_the_morning_report_of_a_swap_goes_out_only_when_asked_for(host, any_receiver):
    from tests.support.host import nightly

    url = f"json://127.0.0.1:{any_receiver.port}/morning"
    host.write_config(notify={"urls": [url]})
    host.publish(nightly(1), migrations=53)
    assert host.t3track("run").returncode == 0
    assert any_receiver.requests == []                       # `swapped` is off by default
    host.write_config(notify={"urls": [url], "on": ["swapped", "refused"]})
    assert host.t3track("backup").returncode == 0  # the backup-present gate wants one newer than the last swap
    host.publish(nightly(2), migrations=54)
    done = host.t3track("run", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert set(doc["downtime_s"]) == {u.name for u in host.users} and all(s > 0 for s in doc["downtime_s"].values())
    assert len(any_receiver.requests) == 1
    message = json.loads(any_receiver.requests[0][2])["message"]
    assert f"{nightly(1)} -> {nightly(2)}" in message
    assert "one-way migrations: 54_EmulatedNightlyChange54" in message
    assert "downtime alice:" in message and "downtime bob:" in message
    assert f"evidence: {doc['evidence']}" in message


def held_night(config, nights_before):
    """One night whose move was held by alice's agent (as the ledger concludes it)."""
    from t3track.host.busy import BusyUser
    from t3track.night.swap import SwapResult

    store = StateStore(config.state_dir)
    result = SwapResult("held", "0.0.42", V1, reason="held: busy: alice",
                        held=[BusyUser("alice", ("thread-1",), ("turn running",))])
    report = ledger.conclude(config, store, "swap", result, run_id=run_id_now())
    finish(config, report)
    return report


def test_a_user_held_three_nights_in_a_row_is_notified_once(tmp_path, receiver):
    config = make_config(tmp_path, webhook=receiver.url)
    fresh_backup(config)
    for night in range(1, 5):
        report = held_night(config, night)
        assert report.exit_code == ExitCode.OK and [h.user for h in report.held] == ["alice"]
        held = [b for b in receiver.bodies if b["event"] == "held"]
        assert len(held) == (0 if night < 3 else 1)
    body = held[0]
    assert body["user"] == "alice" and body["held_nights"] == 3 and "3 nights in a row" in body["reason"]
    state = StateStore(config.state_dir).load()
    assert state.held["alice"].nights == 4 and V1 not in state.failures and not state.denied
