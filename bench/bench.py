"""The benchmark figures of issue 7, from one run on this machine, printed as one table.

    /tmp/venv/bin/python bench/bench.py            # ~3 minutes
    /tmp/venv/bin/python bench/bench.py --quick    # ~1 minute: fewer repetitions, small sizes
    /tmp/venv/bin/python bench/bench.py --full     # adds the 1 GB backup and more repetitions

Everything runs for real on 127.0.0.1: emulated hosts from tests/support/host.py (a loopback npm
registry, users whose servers run under tests/support/supervisor.py), the real `t3track` CLI in
subprocesses, and the real T3 Code 0.0.42 server when tests/real_t3.py has it cached. Every server
started here is stopped (host.close(), Background.stop()). Each figure says how it was measured.
Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    REPO,
    ByteCounter,
    CliRun,
    Figure,
    cli_env,
    median,
    polling,
    print_table,
    run_cli,
    say,
    secs,
    size,
    time_command,
    wait_ready,
)
from tests.support.host import Host, build_host, nightly  # noqa: E402

if TYPE_CHECKING:
    from t3track.host.manifest import BackupInfo

OLD = "0.0.42"


@dataclass
class Options:
    reps: int
    backup_mb: int
    user_counts: tuple[int, ...]
    real_gates: bool
    install_real: bool
    work: Path


def _night(host: Host, version: str, *, migrations: int, fault: str | None = None) -> None:
    """Publish a nightly and take the night's backup, as the backup timer would before the run."""
    host.publish(version, migrations=migrations, fault=fault)
    done = run_cli(host, "backup")
    if done.returncode != 0:
        raise RuntimeError(f"t3track backup failed: {done.stderr_lines[-5:]}")


def _run(host: Host, *args: str, outcome: str) -> CliRun:
    done = run_cli(host, "--json", *args)
    report = done.report if done.stdout.strip() else {}
    if report.get("outcome") != outcome:
        tail = "\n".join(line for _, line in done.stderr_lines[-15:])
        raise RuntimeError(f"t3track {' '.join(args)}: expected {outcome}, got {report.get('outcome')} "
                           f"(exit {done.returncode}): {report.get('reason')}\n{tail}")
    return done


def _mb(kb: int | None) -> str:
    return "n/a" if kb is None else f"{kb / 1024:.0f} MB"


# ---------------------------------------------------------------- one host, alice and bob: swap, no-change, rollback


def bench_two_user_host(opts: Options, figures: list[Figure]) -> None:
    host = build_host(opts.work / "host2")
    counter = ByteCounter(host.registry)
    ports = {u.name: u.port for u in host.users}
    try:
        # A good night, watched by a client polling each live server.
        good = nightly(1)
        _night(host, good, migrations=53)
        counter.reset()
        say(f"good night on 2 users ({OLD} -> {good}) with a client polling each server every 20 ms")
        with polling(ports) as pollers:
            done = _run(host, "run", outcome="swapped")
        moving_bytes, moving_requests = counter.bytes, len(counter.requests)
        gaps = {name: p.longest_gap() for name, p in pollers.items()}
        worst = max(g.seconds for g in gaps.values() if g)
        per_user = ", ".join(f"{n} {secs(g.seconds)}" for n, g in gaps.items() if g)
        timings = done.report["timings"]

        # The same servers restarted by the supervisor alone, measured the same way.
        say(f"restarting each server through the supervisor {opts.reps}x (stop + start), polled the same way")
        restarts: list[float] = []
        commands: list[float] = []
        for _ in range(opts.reps):
            for user in host.users:
                with polling({user.name: user.port}) as pollers:
                    started = time.monotonic()
                    host.service("stop", user)
                    host.service("start", user)
                    commands.append(time.monotonic() - started)
                    while pollers[user.name].first_ok(after=started + commands[-1]) is None:
                        if time.monotonic() - started > 30:
                            raise RuntimeError(f"{user.name}'s server did not come back after a restart")
                        time.sleep(0.02)
                gap = pollers[user.name].longest_gap()
                restarts.append(gap.seconds if gap else float("nan"))
        figures.append(Figure(
            "downtime during a good swap (worst user)", secs(worst),
            f"server restart {secs(median(restarts))} (median of {len(restarts)})",
            f"A thread per user GETs /.well-known/t3/environment on a fresh connection every 20 ms during "
            f"`t3track run` (2 users, {OLD} -> {good}); downtime = longest gap between two 200s ({per_user}). "
            f"The swap stops both servers, snapshots both databases, flips `current`, starts both "
            f"(swap phase {secs(timings.get('swap_s'))}, live verify {secs(timings.get('verify_s'))}). "
            f"Restart = the same gap around `supervisor.py stop` + `start` of one server alone "
            f"(the two commands take {secs(median(commands))}); poll resolution ~20 ms."))
        figures.append(Figure(
            "good night, 2 users (polled): wall time", secs(done.wall_s),
            f"registry {size(moving_bytes)} in {moving_requests} requests",
            f"The same `t3track --json run` from process start to exit: resolve, npm install "
            f"({secs(timings.get('install_s'))}), gates for both users, swap, live verify. Registry bytes = "
            f"every byte the loopback registry wrote back (headers + bodies, npm's requests included), "
            f"counted by wrapping its handler's wfile."))
        figures.append(Figure(
            "peak RSS of `t3track run` (good night)", _mb(done.peak_rss_kb),
            f"with children {_mb(done.tree_rss_kb)}",
            "VmHWM of the t3track process read from /proc/<pid>/status every 10 ms until it exits; "
            "'with children' is os.wait4's ru_maxrss, the largest of it and the processes it waited for "
            "(npm, the probe's `t3 auth pairing create`), not a sum."))

        # Nights where the dist-tag has not moved.
        say(f"{opts.reps} no-change nights")
        walls, byte_counts, request_counts, rss = [], [], [], []
        paths: set[str] = set()
        for _ in range(opts.reps):
            counter.reset()
            done = _run(host, "run", outcome="noop")
            walls.append(done.wall_s)
            byte_counts.append(counter.bytes)
            request_counts.append(len(counter.requests))
            paths |= {r.path for r in counter.requests}
            rss.append(done.peak_rss_kb or 0)
        figures.append(Figure(
            "no-change night: wall time", secs(median(walls)),
            f"min {secs(min(walls))}, max {secs(max(walls))}",
            f"Median of {len(walls)} `t3track --json run` (subprocess, from spawn to exit) with the `nightly` "
            f"dist-tag on the current version: lock, resolve, record history, after-run hooks."))
        figures.append(Figure(
            "no-change night: registry traffic", f"{size(median(byte_counts))}",
            f"{median(request_counts):.0f} request(s): {', '.join(sorted(paths))}",
            "Bytes the loopback registry wrote back per run (status line + headers + body), median over the "
            "same runs; compare the good night's figure above."))
        figures.append(Figure(
            "peak RSS of `t3track run` (no-change night)", _mb(int(median(rss))), "",
            "VmHWM of the t3track process, median over the no-change runs (same /proc polling)."))

        # Cold start of the CLI.
        say(f"cold start: `t3track status`, `python -c pass`, `python -c 'import t3track.cli'` x{opts.reps * 2}")
        n = opts.reps * 2
        status = time_command([sys.executable, "-m", "t3track", "--config", str(host.config_path), "status"],
                              n, env=cli_env())
        bare = time_command([sys.executable, "-c", "pass"], n)
        imports = time_command([sys.executable, "-c", "import t3track.cli"], n, env=cli_env())
        figures.append(Figure(
            "CLI cold start: `t3track status`", secs(median(status)),
            f"`python -c pass` {secs(median(bare))}; `import t3track.cli` {secs(median(imports))}",
            f"Median of {n} subprocess runs each (after one warm-up run), wall time from spawn to exit, "
            f"`{Path(sys.executable).name} -m t3track --config ... status` on the 2-user host; the import "
            f"line shows how much of it is importing the CLI (typer, rich, pydantic)."))

        # A nightly that fails only live: rolled back by itself.
        bad = nightly(2)
        _night(host, bad, migrations=54, fault="no-cookie-live")
        say(f"a nightly that fails only live ({bad}, fault no-cookie-live): rollback, polled")
        with polling(ports) as pollers:
            done = _run(host, "run", outcome="rolled_back")
        failed_at = done.line_time("rolling back to")
        if failed_at is None:
            raise RuntimeError("no 'rolling back to' progress line in the rolled-back run's stderr")
        back = {}
        for name, poller in pollers.items():
            sample = poller.first_ok(after=failed_at, version=good)
            back[name] = sample.received - failed_at if sample else float("nan")
        failed_gate = next(g for g in done.report["gates"] if g["name"] == "live-verify" and g["outcome"] == "fail")
        figures.append(Figure(
            "failed live check -> old version serving", secs(max(back.values())),
            f"rollback incl. its live re-check {secs(done.report['timings'].get('rollback_s'))}",
            f"`t3track run` on {bad} (serves in the sandbox, fails the pairing probe only as a live server). "
            f"Start = arrival time of the 'rolling back to ...' progress line on stderr, printed as soon as "
            f"{failed_gate['user']}'s live-verify failed (that check took {secs(failed_gate['duration_s'])}); "
            f"end = the polling client's first 200 reporting {good} again, for the last of the users "
            f"({', '.join(f'{n} {secs(v)}' for n, v in back.items())}). The rollback stops both servers, "
            f"flips `current` back, restores both databases from the pre-swap snapshot (the candidate "
            f"migrated them to 54), starts both, then re-runs the live check."))
    finally:
        host.close()


# ---------------------------------------------------------------- gates vs the candidate's own start-up


def _bare_start(executable: Path, base: Path, home: Path, log: Path, request_timeout: float = 0.3) -> float | None:
    """Seconds from spawning `serve` on `base` to the first 200 on the environment document."""
    from t3track import runner
    from t3track.host.sandbox import free_port

    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    started = time.monotonic()
    server = runner.start([executable, "serve", "--host", "127.0.0.1", "--port", str(port), "--base-dir", base,
                           "--no-browser"], log_path=log, env=runner.scrubbed_env(home), cwd=home)
    try:
        ready = wait_ready(port, deadline_s=60, request_timeout=request_timeout, alive=server.alive)
        return None if ready is None else time.monotonic() - started
    finally:
        server.stop()


def _copy_state(live_base: Path, backup_info: BackupInfo, dest: Path) -> Path:
    """What a sandbox holds: the live base dir's small files and the newest backup's database."""
    from t3track.host.restore import restore_database

    shutil.copytree(live_base, dest, symlinks=True,
                    ignore=shutil.ignore_patterns("server-runtime.json", "*.sqlite", "*.sqlite-*"))
    restore_database(backup_info, dest / "userdata")
    return dest


def bench_gates(opts: Options, figures: list[Figure]) -> None:
    from t3track.host.backup import newest_backup
    from t3track.host.tree import executable_of
    from t3track.night.gates import run_gates

    host = build_host(opts.work / "host1", users=("alice",))
    try:
        candidate = nightly(1)
        _night(host, candidate, migrations=53)
        _run(host, "dry-run", outcome="noop")  # installs the candidate, gates pass once
        config = host.config()
        executable = executable_of(config, candidate)
        say(f"gates for one user x{opts.reps} (in-process run_gates), and {candidate} starting by itself x{opts.reps}")
        gate_s, per_gate = [], {}
        for i in range(opts.reps):
            started = time.monotonic()
            results = run_gates(config, candidate, executable, evidence_dir=opts.work / "evidence" / f"emu-{i}")
            gate_s.append(time.monotonic() - started)
            if not all(r.passed for r in results):
                raise RuntimeError(f"a gate failed: {[(r.name, r.detail) for r in results if not r.passed]}")
            for r in results:
                per_gate.setdefault(r.name, []).append(r.duration_s)
        user = host.users[0]
        backup_info = newest_backup(config, user.name)
        ready_s = []
        for i in range(opts.reps):
            base = _copy_state(user.base_dir, backup_info, opts.work / "bare" / f"emu-{i}" / "base")
            ready_s.append(_bare_start(executable, base, base.parent / "home", base.parent / "serve.log"))
        ready = median([r for r in ready_s if r is not None])
        gates_median = median(gate_s)
        breakdown = ", ".join(f"{name} {secs(median(v))}" for name, v in per_gate.items())
        figures.append(Figure(
            "gates for one user (emulator candidate)", secs(gates_median),
            f"candidate ready by itself {secs(ready)}; overhead {secs(gates_median - ready)}",
            f"Median of {len(gate_s)} in-process t3track.night.gates.run_gates() for one user ({breakdown}); "
            f"sandbox-serve restores the newest backup, copies the small files, starts the candidate and "
            f"polls every 20 ms; pairing-probe mints with `t3 auth pairing create` and pairs. 'By itself' = "
            f"median of {len(ready_s)} starts of the same executable on a copy of the same state (52 -> 53 "
            f"migration included), from spawn to the first 200, polled every 20 ms."))
    finally:
        host.close()
    bench_real_server(opts, figures)


def bench_real_server(opts: Options, figures: list[Figure]) -> None:
    from tests import real_t3

    cached = real_t3.executable_in(real_t3.installed_prefix())
    if not os.access(cached, os.X_OK) and not opts.install_real:
        figures.append(Figure("real 0.0.42 server: ready time", "skipped", "",
                              f"{cached} is not installed; run the real_server tests once, or pass --install-real "
                              f"(downloads {real_t3.PACKAGE}@{real_t3.VERSION}, 64 MB)."))
        return
    executable = real_t3.install_real_t3()
    work = opts.work / "real"
    reps = max(1, min(opts.reps, 3))
    say(f"real {real_t3.VERSION}: state from a first start, then {reps} starts on copies of it")
    template = work / "template" / "base"
    first = _bare_start(executable, template, template.parent / "home", template.parent / "first.log")
    ready_s = []
    for i in range(reps):
        base = work / f"start-{i}" / "base"
        shutil.copytree(template, base, symlinks=True, ignore=shutil.ignore_patterns("server-runtime.json"))
        ready_s.append(_bare_start(executable, base, base.parent / "home", base.parent / "serve.log"))
    ready = median([r for r in ready_s if r is not None])
    # the same starts seen through 2 s requests: what a lost early request costs
    slow_s = []
    for i in range(reps):
        base = work / f"start-{i}" / "base"
        slow_s.append(_bare_start(executable, base, base.parent / "home", base.parent / "serve-2s.log",
                                  request_timeout=2.0))
    figures.append(Figure(
        f"real {real_t3.VERSION} server: ready time", secs(ready),
        f"first start on an empty dir {secs(first)}; seen with 2 s request timeouts {secs(median(slow_s))}",
        f"Median of {reps} starts of {real_t3.PACKAGE}@{real_t3.VERSION} (tests/real_t3.py's cache) on a copy of "
        f"state it created, from spawn to the first 200 on /.well-known/t3/environment, polled every 20 ms with "
        f"0.3 s request timeouts. The real server accepts connections before it is ready and never answers a "
        f"request that came too early: polled with 2 s timeouts readiness is seen that much later (t3track's "
        f"polls start at 0.1 s and lengthen only when unanswered)."))
    if not opts.real_gates:
        return
    from t3track.host.backup import backup_all
    from t3track.night.gates import run_gates

    live = real_t3.live_base_dir(template, work / "alice-live" / "base")
    config = real_t3.host_config(work / "host", {"alice": live})
    if not all(r.ok for r in backup_all(config)):
        raise RuntimeError("backup of the real state failed")
    gate_reps = max(1, min(opts.reps, 5))
    say(f"gates for one user against the real {real_t3.VERSION} x{gate_reps}, a bare start between runs")
    gates_s: list[float] = []
    per_gate: dict[str, list[float]] = {}
    outside: list[float] = []
    bare_s = []
    for i in range(gate_reps):  # interleaved, so both see the same load
        started = time.monotonic()
        results = run_gates(config, real_t3.VERSION, executable, evidence_dir=work / "evidence" / f"gates-{i}")
        elapsed = time.monotonic() - started
        if not all(r.passed for r in results):
            raise RuntimeError(f"a gate failed on the real server: {[(r.name, r.detail) for r in results]}")
        gates_s.append(elapsed)
        for r in results:
            per_gate.setdefault(r.name, []).append(r.duration_s)
        outside.append(elapsed - sum(r.duration_s for r in results))
        bare_s.append(_bare_start(executable, work / f"start-{i % len(ready_s)}" / "base",
                                  work / f"start-{i % len(ready_s)}" / "home", work / f"bare-{i}.log"))
    ready_near = median([r for r in bare_s if r is not None])
    figures.append(Figure(
        f"gates for one user (real {real_t3.VERSION})", secs(median(gates_s)),
        f"real server ready by itself {secs(ready_near)}; overhead {secs(median(gates_s) - ready_near)}",
        f"Median of {gate_reps} in-process run_gates() with the real executable as the candidate on a backup of "
        f"its own state; the mint runs once the sandbox server is ready "
        f"({', '.join(f'{n} {secs(median(v))}' for n, v in per_gate.items())}; outside the gates' own durations, "
        f"i.e. the sandbox's teardown, {secs(median(outside))}). 'By itself' = median of the {len(bare_s)} bare "
        f"starts taken between the gate runs (20 ms polls, 0.3 s requests). Overhead = gates minus that ready "
        f"time: what the gates add to the server's own start (the mint is a second start of the 160 MB "
        f"executable)."))


# ---------------------------------------------------------------- backup throughput (bench/bench_backup.py)


def bench_backup(opts: Options, figures: list[Figure]) -> None:
    say(f"bench/bench_backup.py --size-mb {opts.backup_mb}")
    done = subprocess.run([sys.executable, str(REPO / "bench" / "bench_backup.py"), "--size-mb", str(opts.backup_mb),
                           "--dir", str(opts.work)], capture_output=True, text=True, env=cli_env(), timeout=3600)
    for line in done.stdout.splitlines():
        say(f"  {line}")
    if done.returncode != 0:
        raise RuntimeError(f"bench_backup.py exited {done.returncode}: {done.stderr[-1000:]}")
    copy = re.search(r"plain copy.*?([\d.]+)s\s+(\d+) MB/s", done.stdout)
    backup = re.search(r"t3track backup.*?([\d.]+)s\s+(\d+) MB/s", done.stdout)
    phases = re.search(r"phases: (.*)", done.stdout)
    built = re.search(r"built .*?: (\d+) MB", done.stdout)
    if not (copy and backup):
        raise RuntimeError(f"could not read bench_backup.py's output:\n{done.stdout}")
    figures.append(Figure(
        f"backup throughput ({built.group(1) if built else opts.backup_mb} MB WAL database)",
        f"{backup.group(2)} MB/s ({backup.group(1)} s)", f"file copy {copy.group(2)} MB/s ({copy.group(1)} s)",
        f"bench/bench_backup.py --size-mb {opts.backup_mb}: the whole `t3track --json backup` command (VACUUM INTO "
        f"+ integrity_check + sha256 + fsync + rename) on a database another connection holds open with a WAL, "
        f"next to shutil.copyfile + fsync of the same file; warm page cache. The command's time includes the CLI's "
        f"start-up (see the cold-start row), which weighs on small sizes. Phases: "
        f"{phases.group(1) if phases else 'n/a'}."))


# ---------------------------------------------------------------- how a night grows with users


def bench_scaling(opts: Options, figures: list[Figure]) -> None:
    from t3track.config import cpu_count

    rows = []
    for count in opts.user_counts:
        names = tuple(f"user{i:02d}" for i in range(1, count + 1))
        say(f"a good night on {count} user(s)")
        host = build_host(opts.work / f"scale-{count}", users=names)
        try:
            _night(host, nightly(1), migrations=53)
            done = _run(host, "run", outcome="swapped")
            report = done.report
            gates = sum(g["duration_s"] for g in report["gates"] if g["name"] != "live-verify")
            rows.append((count, done.wall_s, report["timings"], gates, done.peak_rss_kb))
        finally:
            host.close()
    for count, wall, timings, gates, rss in rows:
        figures.append(Figure(
            f"good night, {count:>2} user(s): wall time", secs(wall),
            f"gates {secs(gates)}, swap {secs(timings.get('swap_s'))}, verify {secs(timings.get('verify_s'))}, "
            f"install {secs(timings.get('install_s'))}; RSS {_mb(rss)}", ""))
    if len(rows) >= 2:
        (n0, w0, *_), (n1, w1, *_) = rows[0], rows[-1]
        figures.append(Figure(f"good night, {n1} users / {n0} user", f"{w1 / w0:.1f}x", "target: at most 3x", ""))
        figures[-1].how = (
            f"One `t3track --json run` per host, from spawn to exit, each host built fresh with {', '.join(str(r[0]) for r in rows)} "
            f"users ({OLD} -> {nightly(1)}, a backup taken just before). Gates = sum of the per-user gate durations "
            f"from the run's JSON; swap/verify/install from its timings. Growth: {secs((w1 - w0) / (n1 - n0))} per "
            f"added user between {n0} and {n1} users. Gates and live checks run side by side (gates.parallel, default "
            f"the CPUs: {cpu_count()} here), and so do the swap's stops, snapshots and starts.")


# ---------------------------------------------------------------- main


SECTIONS: list[tuple[str, str, Callable[[Options, list[Figure]], None]]] = [
    ("host", "2-user host: good swap, restarts, no-change nights, cold start, rollback", bench_two_user_host),
    ("gates", "gates vs start-up", bench_gates),
    ("backup", "backup throughput", bench_backup),
    ("scaling", "scaling with users", bench_scaling),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, 64 MB backup, 1 and 2 users")
    parser.add_argument("--full", action="store_true", help="1 GB backup, more repetitions")
    parser.add_argument("--reps", type=int, default=None, help="repetitions of each repeated measurement")
    parser.add_argument("--install-real", action="store_true",
                        help="install the real 0.0.42 with tests/real_t3.py when it is not cached (network)")
    parser.add_argument("--dir", type=Path, default=None, help="where to build the hosts (default: system temp)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--only", default=None, metavar="SECTIONS",
                        help="comma-separated sections to run: " + ", ".join(key for key, _, _ in SECTIONS))
    args = parser.parse_args(argv)
    wanted = set(args.only.split(",")) if args.only else {key for key, _, _ in SECTIONS}
    unknown = wanted - {key for key, _, _ in SECTIONS}
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    reps = args.reps or (3 if args.quick else 10 if args.full else 5)
    work = Path(tempfile.mkdtemp(prefix="t3track-bench-", dir=args.dir))
    opts = Options(reps=reps, backup_mb=64 if args.quick else 1024 if args.full else 256,
                   user_counts=(1, 2) if args.quick else (1, 2, 5, 10), real_gates=not args.quick,
                   install_real=args.install_real, work=work)
    figures: list[Figure] = []
    failed = []
    load_before = os.getloadavg()
    started = time.monotonic()
    try:
        for key, title, section in SECTIONS:
            if key not in wanted:
                continue
            try:
                section(opts, figures)
            except Exception as exc:  # one broken section must not lose the others' figures
                traceback.print_exc()
                failed.append(title)
                figures.append(Figure(title, "FAILED", "", f"{type(exc).__name__}: {exc}"))
    finally:
        if args.keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    total = time.monotonic() - started
    mode = "--quick" if args.quick else "--full" if args.full else "default"
    print(f"t3track benchmark ({mode}, {reps} repetitions): Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
          f"load average {load_before[0]:.2f} before / {os.getloadavg()[0]:.2f} after, {total:.0f} s in all")
    print("Loopback only; emulator builds of `t3` unless a figure says real. Other work on this machine "
          "adds noise: compare figures from the same run.\n")
    print_table(figures)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
