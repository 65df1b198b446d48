#!/usr/bin/env python3
"""CLI cold start: `t3track status` and `t3track --help` next to `python -c pass`.

Prints medians of N subprocess runs (after one warm-up) of the installed `t3track` entry point on
throwaway configs, and the modules that cost most to import for `status` (python -X importtime,
cumulative). Two `status` lines: `status` on a new host (two users, nothing installed, no backups),
and `status (live)` on a managed one: state.json with a current version, its install and link, each
user's userdata with a database (read by the owner's child) and a live server answering its
serverVersion on loopback (a thread of this process: its CPU is not the CLI's).

Bytecode: pip byte-compiles an installed t3track, so a host never compiles t3track's sources at
start. This checkout is installed editable, and a session may set PYTHONDONTWRITEBYTECODE: the runs
get a private PYTHONPYCACHEPREFIX (the warm-up run fills it) so they start as an installed host does.
`--no-bytecode-cache` keeps the inherited environment (every run compiles what has no .pyc).
Run: .venv/bin/python bench/bench_cold_start.py [-n 21]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from _common import ENVIRONMENT_PATH, median, secs, time_command

LIVE_VERSION = "0.0.42"


def cpu_times(argv: list[str], runs: int, env: dict[str, str]) -> list[float]:
    """user+sys CPU seconds of each run: what the start-up costs even when other work shares the CPUs."""
    times = []
    for i in range(runs + 1):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, timeout=60, check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if i:
            times.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return times


class _Environment(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = json.dumps({"serverVersion": LIVE_VERSION}).encode() if self.path == ENVIRONMENT_PATH else b""
        self.send_response(200 if body else 404)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def live_host(tmp: Path) -> tuple[Path, list[ThreadingHTTPServer]]:
    """A managed host of two users: state, the current install, a database each, a server each."""
    root = tmp / "root"
    (root / "versions" / LIVE_VERSION).mkdir(parents=True)
    (root / "current").symlink_to(f"versions/{LIVE_VERSION}")
    state_dir = tmp / "state"
    state_dir.mkdir()
    (state_dir / "state.json").write_text(json.dumps({
        "schema_version": 1, "current": LIVE_VERSION, "previous": "0.0.41",
        "denied": [{"version": "0.0.43-nightly.20261127.3001", "reason": "gate pairing-probe failed for alice",
                    "gate": "pairing-probe", "at": "2026-11-27T03:00:00Z"}],
        "last_run": {"at": "2026-11-28T03:00:00Z", "outcome": "noop", "exit_code": 0,
                     "run_id": "20261128T030000Z-aaaaaa"}}))
    servers, users = [], []
    for name in ("alice", "bob"):
        userdata = tmp / name / "userdata"
        userdata.mkdir(parents=True)
        db = sqlite3.connect(userdata / "state.sqlite")
        db.execute("CREATE TABLE effect_sql_migrations (migration_id INTEGER PRIMARY KEY, name TEXT)")
        db.executemany("INSERT INTO effect_sql_migrations VALUES (?, ?)", [(i, f"m{i}") for i in range(1, 53)])
        db.commit()
        db.close()
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Environment)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        users.append(f"  - {{name: {name}, base_dir: {tmp / name}, port: {server.server_address[1]}}}\n")
    config = tmp / "config.yaml"
    config.write_text(f"root: {root}\nstate_dir: {state_dir}\nbackup_dir: {tmp}/backups\nusers:\n" + "".join(users))
    return config, servers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=21, help="runs of each command (default 21)")
    parser.add_argument("--no-bytecode-cache", action="store_true",
                        help="keep the inherited environment (PYTHONDONTWRITEBYTECODE: compile at every start)")
    opts = parser.parse_args()
    entry = Path(sys.executable).with_name("t3track")
    with tempfile.TemporaryDirectory(prefix="t3track-cold-") as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(f"root: {tmp}/root\nstate_dir: {tmp}/state\nbackup_dir: {tmp}/backups\nusers:\n"
                          f"  - {{name: alice, base_dir: {tmp}/alice, port: 3773}}\n"
                          f"  - {{name: bob, base_dir: {tmp}/bob, port: 3774}}\n")
        (Path(tmp) / "live").mkdir()
        live_config, servers = live_host(Path(tmp) / "live")
        env = {**os.environ, "NO_COLOR": "1"}
        if not opts.no_bytecode_cache:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = f"{tmp}/pycache"
        commands = [("t3track status", [str(entry), "--config", str(config), "status"]),
                    ("status (live)", [str(entry), "--config", str(live_config), "status"]),
                    ("t3track --help", [str(entry), "--help"]),
                    ("python -c pass", [sys.executable, "-c", "pass"])]
        load = os.getloadavg()[0]
        print(f"cold start, median of {opts.n} runs each (load average {load:.2f}, {os.cpu_count()} CPUs; "
              f"bytecode {'not cached: inherited environment' if opts.no_bytecode_cache else 'cached'}); "
              "wall time, and the CPU time (user+sys) the process used, which load does not inflate:")
        for name, argv in commands:
            wall = time_command(argv, opts.n, env=env)
            cpu = cpu_times(argv, opts.n, env)
            print(f"  {name:<16} wall {secs(median(wall)):>7} (min {secs(min(wall))})   "
                  f"cpu {secs(median(cpu)):>7} (min {secs(min(cpu))})")
        trace = subprocess.run([sys.executable, "-X", "importtime", str(entry), "--config", str(config), "status"],
                               capture_output=True, text=True, env=env)
        for server in servers:
            server.shutdown()
        costs = []
        for line in trace.stderr.splitlines():
            parts = line.split("|")
            if len(parts) == 3 and parts[1].strip().isdigit():
                costs.append((int(parts[1]), parts[2].rstrip()))
        top = sorted(c for c in costs if not c[1].startswith("  "))[-8:]
        print("  top-level imports of `status` (cumulative, one run): "
              + ", ".join(f"{name.strip()} {us / 1000:.0f} ms" for us, name in reversed(top)))


if __name__ == "__main__":
    main()
