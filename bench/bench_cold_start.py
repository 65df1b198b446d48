#!/usr/bin/env python3
"""CLI cold start: `t3track status` and `t3track --help` next to `python -c pass`.

Prints medians of N subprocess runs (after one warm-up) of the installed `t3track` entry point on a
small throwaway config (two users, nothing installed, no backups), and the modules that cost most
to import for `status` (python -X importtime, cumulative). Run: .venv/bin/python bench/bench_cold_start.py [-n 21]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import median, secs, time_command


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=21, help="runs of each command (default 21)")
    opts = parser.parse_args()
    entry = Path(sys.executable).with_name("t3track")
    with tempfile.TemporaryDirectory(prefix="t3track-cold-") as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(f"root: {tmp}/root\nstate_dir: {tmp}/state\nbackup_dir: {tmp}/backups\nusers:\n"
                          f"  - {{name: alice, base_dir: {tmp}/alice, port: 3773}}\n"
                          f"  - {{name: bob, base_dir: {tmp}/bob, port: 3774}}\n")
        env = {**os.environ, "NO_COLOR": "1"}
        commands = [("t3track status", [str(entry), "--config", str(config), "status"]),
                    ("t3track --help", [str(entry), "--help"]),
                    ("python -c pass", [sys.executable, "-c", "pass"])]
        load = os.getloadavg()[0]
        print(f"cold start, median of {opts.n} runs each (load average {load:.2f}, {os.cpu_count()} CPUs); "
              "wall time, and the CPU time (user+sys) the process used, which load does not inflate:")
        for name, argv in commands:
            wall = time_command(argv, opts.n, env=env)
            cpu = cpu_times(argv, opts.n, env)
            print(f"  {name:<16} wall {secs(median(wall)):>7} (min {secs(min(wall))})   "
                  f"cpu {secs(median(cpu)):>7} (min {secs(min(cpu))})")
        trace = subprocess.run([sys.executable, "-X", "importtime", str(entry), "--config", str(config), "status"],
                               capture_output=True, text=True, env=env)
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
