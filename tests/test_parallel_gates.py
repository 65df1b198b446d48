"""Users gated side by side (gates.parallel): sandboxes overlap, the first failure stops new users and
the running ones, every sandbox dies, the report keeps config order; live checks likewise."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest
from tests.real_t3 import host_config, processes_mentioning

from t3track import runner
from t3track.host import backup, sandbox
from t3track.night import gates as gates_mod
from t3track.night.gates import run_gates

NEXT = "0.0.43-nightly.20261126.2901"
USERS = ("alice", "bob", "carol")


def evidence_dir(config) -> Path:  # noqa: ANN001
    return config.state_dir / "evidence" / "run-1"


def gates_of(results):  # noqa: ANN001, ANN201
    return [(r.user, r.name, r.outcome) for r in results]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


@pytest.fixture
def three_users(tmp_path):
    """alice, bob and carol with emulator state, each backed up unless named in `no_backup`."""
    from tests.emulator.package import EXECUTABLE, make_install, make_user_state

    def make(parallel, no_backup=(), **gates):  # noqa: ANN001, ANN003, ANN202
        for name in USERS:
            make_user_state(tmp_path / name, migrations=52, rows=2)
        config = host_config(tmp_path, {name: tmp_path / name for name in USERS}, serve_timeout="60s",
                             parallel=parallel, **gates)
        config = config.model_copy(update={"executable": EXECUTABLE})
        for user in config.users:
            if user.name not in no_backup:
                backup.backup_user(config, user)
        return config

    def candidate(**kwargs):  # noqa: ANN003, ANN202
        return make_install(tmp_path / "candidate", NEXT, **kwargs)

    return make, candidate


@pytest.fixture
def sandboxes(monkeypatch):
    """Every sandbox server started: (user, pid, started, stopped) as seen from t3track, by PID."""
    seen: list[dict] = []
    lock = threading.Lock()
    real_start, real_stop = runner.start, sandbox.SandboxServer.stop

    def start(argv, **kwargs):  # noqa: ANN001, ANN003, ANN202
        process = real_start(argv, **kwargs)
        if "serve" in [str(a) for a in argv]:
            base = str(argv[argv.index("--base-dir") + 1])
            user = next(name for name in USERS if f"t3track-sandbox-{name}-" in base)
            with lock:
                seen.append({"user": user, "pid": process.pid, "started": time.monotonic(), "stopped": None})
        return process

    def stop(server):  # noqa: ANN001, ANN202
        real_stop(server)
        with lock:
            for entry in seen:
                if entry["user"] == server.user and entry["stopped"] is None:
                    entry["stopped"] = time.monotonic()

    monkeypatch.setattr(sandbox.runner, "start", start)
    monkeypatch.setattr(sandbox.SandboxServer, "stop", stop)
    return seen


def nothing_left(config, sandboxes) -> None:  # noqa: ANN001
    workdir = config.state_dir / "sandboxes"
    assert not workdir.exists() or list(workdir.iterdir()) == []
    assert processes_mentioning(str(workdir)) == []
    assert [s["pid"] for s in sandboxes if alive(s["pid"])] == []
    assert all(s["stopped"] is not None for s in sandboxes)


def overlaps(a: dict, b: dict) -> bool:
    return a["started"] < b["stopped"] and b["started"] < a["stopped"]


def test_two_users_sandboxes_run_side_by_side_with_parallel_2(three_users, sandboxes):
    make, candidate = three_users
    config = make(parallel=2)
    config = config.model_copy(update={"users": config.users[:2]})
    results = run_gates(config, NEXT, candidate(start_delay_s=1), evidence_dir=evidence_dir(config))
    assert [r.outcome for r in results] == ["pass"] * 6, [r.detail for r in results]
    alice, bob = (next(s for s in sandboxes if s["user"] == name) for name in ("alice", "bob"))
    assert overlaps(alice, bob)
    assert alice["pid"] != bob["pid"]
    ports = {r.detail.split(" ready on ")[1].split()[0] for r in results if r.name == "sandbox-serve"}
    assert len(ports) == 2  # each sandbox on its own port
    nothing_left(config, sandboxes)


def test_with_parallel_1_one_users_sandbox_is_gone_before_the_next_starts(three_users, sandboxes):
    make, candidate = three_users
    config = make(parallel=1)
    config = config.model_copy(update={"users": config.users[:2]})
    results = run_gates(config, NEXT, candidate(start_delay_s=1), evidence_dir=evidence_dir(config))
    assert [r.outcome for r in results] == ["pass"] * 6
    alice, bob = (next(s for s in sandboxes if s["user"] == name) for name in ("alice", "bob"))
    assert not overlaps(alice, bob)
    assert alice["stopped"] <= bob["started"]
    nothing_left(config, sandboxes)


def test_a_failure_stops_a_later_users_running_sandbox_and_no_later_user_starts(three_users, sandboxes, monkeypatch):
    make, candidate = three_users
    config = make(parallel=2, no_backup=("alice",))
    bob_serving = threading.Event()
    real_check = gates_mod.check_backup_present

    def check(config, user, **kwargs):  # noqa: ANN001, ANN003, ANN202
        if user.name == "alice":  # fail only once bob's sandbox server is running
            assert bob_serving.wait(30)
        return real_check(config, user, **kwargs)

    real_start = sandbox.runner.start

    def start(argv, **kwargs):  # noqa: ANN001, ANN003, ANN202
        process = real_start(argv, **kwargs)
        bob_serving.set()
        return process

    monkeypatch.setattr(gates_mod, "check_backup_present", check)
    monkeypatch.setattr(sandbox.runner, "start", start)
    lines: list[str] = []
    # the candidate takes 30 s to come up: only a stopped sandbox lets this return early
    results = run_gates(config, NEXT, candidate(start_delay_s=30), evidence_dir=evidence_dir(config),
                        progress=lines.append)
    assert gates_of(results) == [("alice", "backup-present", "fail")]
    assert "bob: sandbox-serve stopped: another user's gate failed" in lines
    assert [s["user"] for s in sandboxes] == ["bob"]
    assert not [line for line in lines if line.startswith("carol")]  # never started
    nothing_left(config, sandboxes)


def test_an_earlier_user_runs_on_after_a_later_users_failure_and_its_failure_is_reported(three_users, sandboxes,
                                                                                          monkeypatch):
    make, candidate = three_users
    config = make(parallel=2, no_backup=("bob",))
    real_check = gates_mod.check_backup_present
    bob_failed = threading.Event()

    def check(config, user, **kwargs):  # noqa: ANN001, ANN003, ANN202
        if user.name == "alice":
            assert bob_failed.wait(30)  # alice's gates go on only after bob's failure
        result = real_check(config, user, **kwargs)
        if user.name == "bob":
            bob_failed.set()
        return result

    monkeypatch.setattr(gates_mod, "check_backup_present", check)
    results = run_gates(config, NEXT, candidate(fault="crash-on-start"), evidence_dir=evidence_dir(config))
    assert gates_of(results) == [("alice", "backup-present", "pass"), ("alice", "sandbox-serve", "fail")]
    nothing_left(config, sandboxes)


def test_the_report_is_in_config_order_whatever_finishes_first(three_users, sandboxes, monkeypatch):
    make, candidate = three_users
    config = make(parallel=3)
    real_check = gates_mod.check_backup_present
    finished: list[str] = []
    others_done = threading.Event()

    def check(config, user, **kwargs):  # noqa: ANN001, ANN003, ANN202
        if user.name == "alice":  # alice, first in the config, finishes last
            assert others_done.wait(60)
        return real_check(config, user, **kwargs)

    real_probe = gates_mod._UserGates.pairing_probe

    def pairing_probe(self):  # noqa: ANN001, ANN202
        result = real_probe(self)
        finished.append(self.user.name)
        if {"bob", "carol"} <= set(finished):
            others_done.set()
        return result

    monkeypatch.setattr(gates_mod, "check_backup_present", check)
    monkeypatch.setattr(gates_mod._UserGates, "pairing_probe", pairing_probe)
    lines: list[str] = []
    results = run_gates(config, NEXT, candidate(), evidence_dir=evidence_dir(config), progress=lines.append)
    assert finished[-1] == "alice"
    assert [(r.user, r.name) for r in results] == [
        (user, gate) for user in USERS for gate in ("backup-present", "sandbox-serve", "pairing-probe")]
    # whole lines only, never two threads' text mixed into one
    pattern = re.compile(rf"^({'|'.join(USERS)}): (backup-present|sandbox-serve|pairing-probe) "
                         rf"(\({re.escape(NEXT)}\)|pass in \d+\.\ds)$")
    assert [line for line in lines if not pattern.match(line)] == []
    nothing_left(config, sandboxes)


def test_an_earlier_users_failure_wins_over_a_later_users_in_the_report(three_users, sandboxes):
    make, candidate = three_users
    config = make(parallel=3, no_backup=("alice", "carol"))
    results = run_gates(config, NEXT, candidate(), evidence_dir=evidence_dir(config))
    assert gates_of(results) == [("alice", "backup-present", "fail")]
    nothing_left(config, sandboxes)


def test_a_host_fault_in_one_user_is_raised_after_every_sandbox_is_gone(three_users, sandboxes, monkeypatch):
    from t3track.errors import EnvironmentFault

    make, candidate = three_users
    config = make(parallel=2)
    real_build = sandbox._build

    def build(server, config, user):  # noqa: ANN001, ANN202
        if user.name == "bob":
            raise EnvironmentFault("bob: disk full (injected)")
        real_build(server, config, user)

    monkeypatch.setattr(sandbox, "_build", build)
    with pytest.raises(EnvironmentFault, match="disk full"):
        run_gates(config, NEXT, candidate(), evidence_dir=evidence_dir(config))
    nothing_left(config, sandboxes)


def test_run_gates_for_some_users_gates_only_those(three_users, sandboxes):
    make, candidate = three_users
    config = make(parallel=2, no_backup=("alice",))  # alice would fail: she is not asked for
    results = run_gates(config, NEXT, candidate(), evidence_dir=evidence_dir(config), users=config.users[1:])
    assert {r.user for r in results} == {"bob", "carol"}
    assert [r.outcome for r in results] == ["pass"] * 6
    assert sorted(s["user"] for s in sandboxes) == ["bob", "carol"]
    nothing_left(config, sandboxes)


def test_two_sandboxes_never_share_a_port_even_when_the_kernel_offers_it_twice(three_users, monkeypatch):
    make, candidate = three_users
    config = make(parallel=1)
    executable = candidate()
    offered = sandbox.free_port()
    real_free_port = sandbox.free_port
    monkeypatch.setattr(sandbox, "free_port", lambda: offered if offered not in sandbox._ports_taken else real_free_port())
    workdir = config.state_dir / "sandboxes"
    first = sandbox.serve_candidate(config, config.users[0], executable, NEXT, workdir=workdir,
                                    evidence_dir=evidence_dir(config))
    try:
        calls = iter([offered, offered])  # the kernel hands out the held port again
        monkeypatch.setattr(sandbox, "free_port", lambda: next(calls, None) or real_free_port())
        second = sandbox.serve_candidate(config, config.users[1], executable, NEXT, workdir=workdir,
                                         evidence_dir=evidence_dir(config))
        try:
            assert first.port == offered
            assert second.port != offered
        finally:
            second.stop()
    finally:
        first.stop()
    assert offered not in sandbox._ports_taken  # handed back when the sandbox stopped


# ---------------------------------------------------------------- live checks after a swap


@pytest.fixture
def live_host(host):  # noqa: ANN001, ANN201  (tests/conftest.py: alice and bob serving 0.0.42)
    return host


def _with_parallel(config, parallel: int):  # noqa: ANN001, ANN202
    return config.model_copy(update={"gates": config.gates.model_copy(update={"parallel": parallel})})


def test_live_checks_run_side_by_side_and_report_in_config_order(live_host, monkeypatch):
    from t3track.night import verify

    config = _with_parallel(live_host.config(), 2)
    both_inside = threading.Barrier(2, timeout=30)  # broken (an error) unless the two checks overlap
    bob_done = threading.Event()
    finished: list[str] = []
    real = verify._verify_user

    def checked(config, user, *args):  # noqa: ANN001, ANN002, ANN202
        both_inside.wait()
        if user.name == "alice":  # alice, first in the config, finishes last
            assert bob_done.wait(30)
        result = real(config, user, *args)
        finished.append(user.name)
        bob_done.set()
        return result

    monkeypatch.setattr(verify, "_verify_user", checked)
    marks: list = []
    results = verify.verify_live(config, "0.0.42", marks=marks)
    assert finished == ["bob", "alice"]
    assert [(r.user, r.outcome) for r in results] == [("alice", "pass"), ("bob", "pass")], [r.detail for r in results]
    assert sorted(m.user for m in marks if m.what == "verified") == ["alice", "bob"]


def test_live_checks_of_some_users_check_only_those(live_host):
    from t3track.night.verify import verify_live

    config = live_host.config()
    results = verify_live(config, "0.0.42", users=[config.users[1]])
    assert [(r.user, r.outcome) for r in results] == [("bob", "pass")]


def test_a_failed_live_check_stops_the_users_after_it(live_host, monkeypatch):
    from datetime import timedelta

    from t3track.night import verify

    config = _with_parallel(live_host.config(), 1).model_copy(update={"verify_timeout": timedelta(seconds=2)})
    live_host.service("stop", live_host.users[0])  # alice's server is down
    checked: list[str] = []
    real = verify._verify_user

    def record(config, user, *args):  # noqa: ANN001, ANN002, ANN202
        checked.append(user.name)
        return real(config, user, *args)

    monkeypatch.setattr(verify, "_verify_user", record)
    results = verify.verify_live(config, "0.0.42")
    assert [(r.user, r.outcome) for r in results] == [("alice", "fail")]
    assert checked == ["alice"]  # bob's check never started


@pytest.mark.parametrize("parallel", [1, 2])
def test_servers_start_side_by_side_up_to_gates_parallel_and_a_failure_is_raised_in_config_order(tmp_path, parallel):
    from t3track.config import parse_config
    from t3track.errors import CriticalError
    from t3track.host.services import UserMark, each_user

    log = tmp_path / "log"
    script = f'echo "$0 begin $(date +%s.%N)" >> {log}; sleep 0.4; echo "$0 end $(date +%s.%N)" >> {log}; ' \
             '[ "$0" != carol ]'
    config = parse_config({
        "users": [{"name": n, "base_dir": str(tmp_path / n), "port": 4100 + i} for i, n in enumerate(("alice", "bob", "carol"))],
        "services": {"start": ["/bin/sh", "-c", script, "{user}"], "stop": ["true"]},
        "gates": {"parallel": parallel}})
    marks: list[UserMark] = []
    problems = each_user(config, "start", lambda _: None, keep_going=True, marks=marks)
    assert len(problems) == 1 and problems[0].startswith("start of carol's server failed"), problems
    times: dict[str, dict[str, float]] = {}
    for line in log.read_text().splitlines():
        user, what, at = line.split()
        times.setdefault(user, {})[what] = float(at)
    overlap = times["bob"]["begin"] < times["alice"]["end"]
    assert overlap == (parallel == 2), times
    assert {m.user for m in marks} == {"alice", "bob", "carol"}
    log.unlink()
    with pytest.raises(CriticalError, match="carol"):
        each_user(config, "start", lambda _: None)


def _timed_services(tmp_path: Path, parallel: int, stop_s: dict[str, float]):  # noqa: ANN202
    """Users whose stop command logs `USER begin|end TIME` around a sleep of its own length."""
    from t3track.config import parse_config

    log = tmp_path / "log"
    sleeps = " ".join(f'[ "$0" = {user} ] && sleep {s};' for user, s in stop_s.items())
    script = f'echo "$0 begin $(date +%s.%N)" >> {log}; {sleeps} echo "$0 end $(date +%s.%N)" >> {log}; true'
    config = parse_config({
        "users": [{"name": n, "base_dir": str(tmp_path / n), "port": 4100 + i} for i, n in enumerate(stop_s)],
        "services": {"start": ["true"], "stop": ["/bin/sh", "-c", script, "{user}"]},
        "gates": {"parallel": parallel}})

    def then_logged(user) -> None:  # noqa: ANN001
        with log.open("a") as handle:
            handle.write(f"{user.name} then {time.time()}\n")

    def times() -> dict[str, dict[str, float]]:
        found: dict[str, dict[str, float]] = {}
        for line in log.read_text().splitlines():
            user, what, at = line.split()
            found.setdefault(user, {})[what] = float(at)
        return found

    return config, then_logged, times


def test_a_users_step_after_its_stop_runs_while_a_slower_users_stop_is_still_under_way(tmp_path):
    from t3track.host.services import each_user

    config, then_logged, times = _timed_services(tmp_path, 2, {"alice": 0.05, "bob": 1.0})
    each_user(config, "stop", lambda _: None, then=then_logged)
    at = times()
    for user in ("alice", "bob"):
        assert at[user]["end"] <= at[user]["then"], at  # never before that user's own stop is done
    assert at["alice"]["then"] < at["bob"]["end"], at  # not held back until every server has stopped


def test_a_failing_step_after_a_stop_stops_the_later_users_and_is_raised(tmp_path):
    from t3track.host.services import each_user

    config, then_logged, times = _timed_services(tmp_path, 1, {"alice": 0, "bob": 0, "carol": 0})

    def then(user) -> None:  # noqa: ANN001
        then_logged(user)
        if user.name == "bob":
            raise OSError(f"no room for {user.name}'s snapshot")

    with pytest.raises(OSError, match="bob"):
        each_user(config, "stop", lambda _: None, then=then)
    at = times()
    assert set(at) == {"alice", "bob"} and "then" in at["alice"], at  # carol's server was never stopped


def test_the_next_server_stops_while_a_users_snapshot_is_still_being_taken(tmp_path, monkeypatch):
    from tests.emulator import package as emu

    from t3track.config import parse_config
    from t3track.host import backup, services
    from t3track.host.manifest import MANIFEST
    from t3track.night import swap

    users = []
    for i, name in enumerate(("alice", "bob")):
        base = tmp_path / name / ".t3"
        emu.make_user_state(base, migrations=52, rows=2)
        users.append({"name": name, "base_dir": str(base), "port": 4100 + i})
    config = parse_config({"users": users, "state_dir": str(tmp_path / "state"), "gates": {"parallel": 1},
                           "services": {"start": ["true"], "stop": ["true"]}})
    snapshots = tmp_path / "state" / "snapshots" / "run-1"
    bob_stopping = threading.Event()
    seen: list[bool] = []
    real_snapshot = backup.snapshot_database

    def service(_config, action, user) -> None:  # noqa: ANN001
        if action == "stop" and user.name == "bob":
            bob_stopping.set()

    def snapshot(base_dir, dest, **kw):  # noqa: ANN001, ANN003, ANN202
        if dest.name == "alice":  # alice's snapshot lasts until bob's server is being stopped
            seen.append(bob_stopping.wait(10))
        return real_snapshot(base_dir, dest, **kw)

    monkeypatch.setattr(services, "service", service)
    monkeypatch.setattr(backup, "snapshot_database", snapshot)
    swap._stop_and_snapshot_all(config, snapshots, lambda _: None, swap.SwapResult("swapped", "0.0.42", NEXT))
    assert seen == [True]  # one worker for the stops, and it did not wait for alice's snapshot
    assert all((snapshots / name / MANIFEST).is_file() for name in ("alice", "bob"))


def test_a_failed_snapshot_is_raised_after_every_server_has_stopped(tmp_path, monkeypatch):
    from t3track.config import parse_config
    from t3track.host import services
    from t3track.night import swap

    config = parse_config({"users": [{"name": n, "base_dir": str(tmp_path / n), "port": 4100 + i}
                                     for i, n in enumerate(USERS)],
                           "state_dir": str(tmp_path / "state"), "gates": {"parallel": 2},
                           "services": {"start": ["true"], "stop": ["true"]}})
    stopped: list[str] = []
    monkeypatch.setattr(services, "service", lambda _c, _a, user: stopped.append(user.name))

    def snapshotter(_dir, _progress):  # noqa: ANN001, ANN202
        def one(user) -> None:  # noqa: ANN001
            if user.name == "alice":
                raise OSError(f"no room for {user.name}'s snapshot")
        return one

    monkeypatch.setattr(swap, "_snapshotter", snapshotter)
    with pytest.raises(OSError, match="alice"):
        swap._stop_and_snapshot_all(config, tmp_path / "snaps", lambda _: None, swap.SwapResult("swapped", None, NEXT))
    assert sorted(stopped) == sorted(USERS)  # as when the snapshots came after the last stop
