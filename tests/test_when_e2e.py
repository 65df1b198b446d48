"""When to move, end to end on an emulated host: swap windows, blackout days, the approval step and
the hooks around the swap.

The nights run as subprocesses on the real clock in the host's local time zone, so each window is
chosen relative to the local time now, an hour or more away from its edges (never a sleep, and no test
lasts an hour). A ring's soak passes by moving its `served` stretches back, as in tests/test_rings.py.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from tests.support.host import Host, build_host, nightly

from t3track.config import DAYS

pytestmark = pytest.mark.slow

HOOK = """\
import json, sys, time
log, code, sleep = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
data = json.load(sys.stdin)
with open(log, "a") as out:
    out.write(json.dumps({"argv": sys.argv[4:], "data": data}) + "\\n")
time.sleep(sleep)
sys.exit(code)
"""


def local_now() -> datetime:
    return datetime.now().astimezone()


def hhmm(minutes: int) -> str:
    minutes %= 1440
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def closed_window() -> tuple[str, datetime]:
    """A daily window that opens two hours after this hour began and lasts an hour, and when it opens next."""
    now = local_now()
    opens = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
    return f"{hhmm(opens.hour * 60)}-{hhmm(opens.hour * 60 + 60)}", opens


def open_window_across_midnight() -> str:
    """A window open now that runs past midnight: yesterday's, into today, or today's, into tomorrow."""
    now = local_now()
    minutes = now.hour * 60 + now.minute
    if minutes < 22 * 60:
        return f"{DAYS[(now.weekday() - 1) % 7]} 23:00-{hhmm(minutes + 60)}"  # opened yesterday, closes in an hour
    return f"{DAYS[now.weekday()]} {hhmm(minutes - 60)}-01:00"                # opened an hour ago, closes after midnight


def run(host: Host, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict]:
    result = host.t3track(*args, "--json", env=env)
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def last(host: Host, event: str) -> dict:
    return next(e for e in reversed(host.history()) if e["event"] == event)


def hook(tmp_path: Path, name: str, code: int = 0, sleep: float = 0, *args: str) -> tuple[list[str], Path]:
    script = tmp_path / "hook.py"
    script.write_text(HOOK)
    log = tmp_path / f"{name}.log"
    return [sys.executable, str(script), str(log), str(code), str(sleep), *args], log


def logged(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def gate_names(doc: dict) -> set[str]:
    return {g["name"] for g in doc["gates"]}


# ---------------------------------------------------------------- windows and blackout days


def test_a_night_outside_its_window_rehearses_does_not_swap_and_status_says_when_it_opens(host):
    window, opens = closed_window()
    host.write_config(when={"windows": [window]})
    v = nightly(1)
    host.publish(v, migrations=53)
    pids = host.server_pids()
    code, doc = run(host, "run")
    assert code == 0 and doc["outcome"] == "noop" and doc["held_by"] == "window"
    assert f"outside every swap window ({window})" in doc["reason"] and f"run --to {v}" in doc["reason"]
    assert {"sandbox-serve", "pairing-probe"} <= gate_names(doc)          # rehearsed as usual
    assert all(g["outcome"] == "pass" for g in doc["gates"] if g["name"] != "drift")
    assert host.current_target() == "versions/0.0.42" and host.server_pids() == pids
    assert host.state()["current"] == "0.0.42" and not host.state().get("failures", {}).get(v)
    assert last(host, "run")["held_by"] == "window"

    code, status = run(host, "status")
    assert code == 0 and status["window"]["open"] is False and status["window"]["windows"] == [window]
    assert datetime.fromisoformat(status["window"]["next_open"].replace("Z", "+00:00")) in (opens, opens + timedelta(days=1))
    text = host.t3track("status").stdout
    assert "window" in text and "the next window opens" in text

    # an operator can mean it now: `run --to` is never held by a window
    code, doc = run(host, "run", "--to", v)
    assert code == 0 and doc["outcome"] == "swapped" and host.current_target() == f"versions/{v}"


def test_a_blackout_range_holds_the_night_and_names_the_range(host):
    today = local_now().date()
    blackout = f"{today - timedelta(days=1)}..{today + timedelta(days=1)}"
    host.write_config(when={"blackout": [blackout]})
    v = nightly(1)
    host.publish(v)
    pids = host.server_pids()
    code, doc = run(host, "run")
    assert code == 0 and doc["outcome"] == "noop" and doc["held_by"] == "blackout"
    assert f"{today} is a blackout day ({blackout})" in doc["reason"]
    assert host.current_target() == "versions/0.0.42" and host.server_pids() == pids
    code, status = run(host, "status")
    assert status["window"]["open"] is False
    assert status["window"]["next_open"] is not None and status["window"]["blackout"] == [blackout]


def test_a_window_across_midnight_that_is_open_now_lets_the_night_swap(host):
    window = open_window_across_midnight()
    host.write_config(when={"windows": [window]})
    v = nightly(1)
    host.publish(v)
    code, doc = run(host, "run")
    assert code == 0 and doc["outcome"] == "swapped", doc["reason"]
    assert host.current_target() == f"versions/{v}"
    assert run(host, "status")[1]["window"]["open"] is True


# ---------------------------------------------------------------- the approval step


def test_approval_cycle_night_leaves_it_pending_approve_swaps_it(host, tmp_path):
    told = tmp_path / "told.jsonl"
    notify = [sys.executable, "-c", f"import sys; open({str(told)!r}, 'a').write(sys.stdin.read())"]
    host.write_config(when={"approval": "manual"}, notify={"command": notify, "on": ["pending"]})
    v = nightly(1)
    host.publish(v, migrations=53)
    pids = host.server_pids()

    code, doc = run(host, "run")
    assert code == 0 and doc["outcome"] == "noop" and doc["held_by"] == "approval"
    assert "pending approval" in doc["reason"] and f"`t3track approve {v}`" in doc["reason"]
    assert host.server_pids() == pids and host.current_target() == "versions/0.0.42"
    pending = host.state()["pending"]
    assert [(p["version"], p["ring"], p["from_version"]) for p in pending] == [(v, None, "0.0.42")]
    assert pending[0]["gates_passed_at"] and pending[0]["evidence"] == doc["evidence"]
    notes = [json.loads(line) for line in told.read_text().splitlines()]
    assert [(n["event"], n["to"]) for n in notes] == [("pending", v)]
    assert "pending approval" in notes[0]["reason"] and f"t3track approve {v}" in notes[0]["reason"]

    code, status = run(host, "status")
    assert [p["version"] for p in status["pending"]] == [v] and status["approval"] == "manual"
    check = host.t3track("check")
    assert check.returncode == 0 and f"{v} pending approval for" in check.stdout and "pending=1" in check.stdout
    prom = (host.state_dir / "metrics" / "t3track.prom").read_text()
    assert f't3track_pending_approval{{ring="",version="{v}"}} 1.0' in prom
    assert 't3track_consecutive_refusals 0.0' in prom

    # the next night does not rehearse it again, and does not tell again
    code, again = run(host, "run")
    assert code == 0 and again["held_by"] == "approval" and again["gates"] == [] and host.server_pids() == pids
    assert len(told.read_text().splitlines()) == 1

    code, done = run(host, "approve")
    assert code == 0 and done["outcome"] == "swapped" and done["to"] == v, done["reason"]
    assert "sandbox-serve" not in gate_names(done)                         # its gates passed within max_age
    assert {(g["name"], g["outcome"]) for g in done["gates"]} == {("live-verify", "pass")}
    assert any("within when.approval_max_age" in n for n in done["notes"])
    for user in host.users:
        assert host.serving(user) == v and host.max_migration(user) == 53
    state = host.state()
    assert state["current"] == v and state["pending"] == []
    assert last(host, "approve")["outcome"] == "swapped"


def test_reject_denies_the_pending_candidate_and_the_next_night_leaves_it(host):
    host.write_config(when={"approval": "manual"})
    v = nightly(1)
    host.publish(v)
    assert run(host, "run")[1]["held_by"] == "approval"
    result = host.t3track("reject", v, "--reason", "the changelog breaks our proxy")
    assert result.returncode == 0, result.stderr
    state = host.state()
    assert state["pending"] == []
    denial = next(d for d in state["denied"] if d["version"] == v)
    assert denial["gate"] == "approval" and "the changelog breaks our proxy" in denial["reason"]
    assert last(host, "reject")["version"] == v
    code, doc = run(host, "run")
    assert code == 0 and doc["outcome"] == "noop" and "denied" in doc["reason"] and host.state()["pending"] == []
    assert host.t3track("approve").returncode == 2                          # nothing pending: a usage error


def test_approving_a_candidate_whose_gates_passed_too_long_ago_runs_them_again_first(host):
    host.write_config(when={"approval": "manual", "approval_max_age": "1h"})
    v = nightly(1)
    host.publish(v)
    assert run(host, "run")[1]["held_by"] == "approval"
    path = host.state_dir / "state.json"
    state = json.loads(path.read_text())
    state["pending"][0]["gates_passed_at"] = (datetime.now().astimezone() - timedelta(hours=2)).isoformat()
    path.write_text(json.dumps(state))
    code, doc = run(host, "approve", v)
    assert code == 0 and doc["outcome"] == "swapped"
    assert {"sandbox-serve", "pairing-probe", "live-verify"} <= gate_names(doc)
    assert any("older than when.approval_max_age 1h" in n for n in doc["notes"])
    assert host.state()["pending"] == [] and host.current_target() == f"versions/{v}"


def test_a_kill_during_approve_converges_like_any_swap(host):
    host.write_config(when={"approval": "manual"})
    v = nightly(1)
    host.publish(v)
    assert run(host, "run")[1]["held_by"] == "approval"
    killed = host.t3track("approve", env={"T3TRACK_FAULT_KILL_AT": "flipped"})
    assert killed.returncode == -9
    code, doc = run(host, "run")                                            # the next night finishes the swap
    assert doc["recovered"].startswith("finished an interrupted run"), doc
    assert host.current_target() == f"versions/{v}" and host.state()["current"] == v
    for user in host.users:
        assert host.serving(user) == v
    assert host.state()["pending"] == [] and not (host.state_dir / "journal.json").exists()


def test_with_rings_each_ring_move_is_approved_on_its_own(tmp_path):
    rings = [{"name": "canary", "users": ["alice"]}, {"name": "everyone", "users": ["bob"], "soak": "24h"}]
    host = build_host(tmp_path / "host", rings=rings)
    try:
        assert host.t3track("backup").returncode == 0
        host.write_config(when={"approval": "manual"})
        alice, bob = host.users
        v = nightly(1)
        host.publish(v)
        code, doc = run(host, "run")
        assert code == 0 and doc["held_by"] == "approval" and doc["ring"] == "canary"
        assert f"`t3track approve {v} --ring canary`" in doc["reason"]
        assert [(p["version"], p["ring"]) for p in host.state()["pending"]] == [(v, "canary")]
        code, doc = run(host, "approve", "--ring", "canary")
        assert code == 0 and doc["outcome"] == "swapped" and doc["ring"] == "canary"
        assert host.serving(alice) == v and host.serving(bob) == "0.0.42"

        soak(host, "canary", hours=25)
        assert host.t3track("backup").returncode == 0
        code, doc = run(host, "run")                                         # the promotion waits for its own approval
        assert code == 0 and doc["held_by"] == "approval" and doc["ring"] == "everyone", doc["reason"]
        assert host.serving(bob) == "0.0.42"
        code, status = run(host, "status")
        assert [(p["version"], p["ring"]) for p in status["pending"]] == [(v, "everyone")]
        code, doc = run(host, "approve", v, "--ring", "everyone")
        assert code == 0 and doc["outcome"] == "swapped" and doc["ring"] == "everyone"
        assert host.serving(bob) == v and host.state()["pending"] == []
    finally:
        host.close()


def soak(host: Host, ring: str, hours: float) -> None:
    path = host.state_dir / "state.json"
    state = json.loads(path.read_text())
    for stretch in state["rings"][ring]["served"]:
        for key in ("since", "until"):
            if stretch.get(key):
                stretch[key] = (datetime.fromisoformat(stretch[key]) - timedelta(hours=hours)).isoformat()
    path.write_text(json.dumps(state))


# ---------------------------------------------------------------- hooks


def test_a_failing_pre_swap_hook_stops_the_move_with_every_server_untouched(host, tmp_path):
    argv, log = hook(tmp_path, "pre", 3, 0, "{from}", "{to}", "{users}")
    host.write_config(hooks={"pre_swap": argv})
    v = nightly(1)
    host.publish(v, migrations=53)
    pids = host.server_pids()
    code, doc = run(host, "run")
    assert code == 1 and doc["outcome"] == "refused" and doc["held_by"] == "pre_swap"
    assert "pre_swap hook stopped the move" in doc["reason"] and "exited 3" in doc["reason"]
    assert host.server_pids() == pids and host.current_target() == "versions/0.0.42"
    for user in host.users:
        assert host.serving(user) == "0.0.42" and host.max_migration(user) == 52
    state = host.state()
    assert not state.get("failures", {}).get(v) and not any(d["version"] == v for d in state["denied"])
    [ran] = logged(log)
    assert ran["argv"] == ["0.0.42", v, "alice,bob"]
    assert ran["data"]["to"] == v and ran["data"]["from"] == "0.0.42" and ran["data"]["users"] == ["alice", "bob"]
    event = last(host, "hook")
    assert event["hook"] == "pre_swap" and event["ok"] is False
    prom = (host.state_dir / "metrics" / "t3track.prom").read_text()
    assert "t3track_consecutive_refusals 0.0" in prom                      # not a refusal streak

    host.write_config(hooks={"pre_swap": hook(tmp_path, "pre", 0)[0]})      # the candidate is still eligible
    code, doc = run(host, "run")
    assert code == 0 and doc["outcome"] == "swapped" and doc["to"] == v


def test_a_pre_swap_hook_that_times_out_stops_the_move(host, tmp_path):
    argv, _ = hook(tmp_path, "slow", 0, 60)
    host.write_config(hooks={"pre_swap": argv, "timeout": "1s"})
    v = nightly(1)
    host.publish(v)
    pids = host.server_pids()
    code, doc = run(host, "run")
    assert code == 1 and doc["held_by"] == "pre_swap" and "timed out" in doc["reason"]
    assert host.server_pids() == pids and host.current_target() == "versions/0.0.42"


def test_a_pre_swap_hook_naming_a_user_runs_once_per_user(host, tmp_path):
    argv, log = hook(tmp_path, "each", 0, 0, "{user}", "{port}")
    host.write_config(hooks={"pre_swap": argv})
    v = nightly(1)
    host.publish(v)
    assert run(host, "run")[1]["outcome"] == "swapped"
    assert [r["argv"] for r in logged(log)] == [[u.name, str(u.port)] for u in host.users]


def test_post_hooks_that_fail_do_not_harm_the_night_and_are_recorded(host, tmp_path):
    post, post_log = hook(tmp_path, "post", 1)
    back, back_log = hook(tmp_path, "back", 1)
    host.write_config(hooks={"post_swap": post, "post_rollback": back})
    v1 = nightly(1)
    host.publish(v1)
    code, doc = run(host, "run")
    assert code == 0 and doc["outcome"] == "swapped"
    assert any("post_swap hook failed (best effort" in n for n in doc["notes"])
    assert [r["data"]["to"] for r in logged(post_log)] == [v1] and logged(back_log) == []
    assert last(host, "hook")["hook"] == "post_swap" and last(host, "hook")["ok"] is False

    v2 = nightly(2)
    host.publish(v2, fault="no-cookie-live")
    code, doc = run(host, "run")
    assert code == 1 and doc["outcome"] == "rolled_back"
    assert [(r["data"]["hook"], r["data"]["from"], r["data"]["to"]) for r in logged(back_log)] == [("post_rollback", v1, v2)]
    assert len(logged(post_log)) == 1
    assert last(host, "hook")["hook"] == "post_rollback"
    assert host.current_target() == f"versions/{v1}"
